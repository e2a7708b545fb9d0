"""training.finetune: the accelerate loop on CPU, checkpoints, and resuming to the same weights."""

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModel

from tests.conftest import make_tiny_table
from training.finetune import checkpoint_dir_for, latest_checkpoint, train_finetuned_router


pytestmark = pytest.mark.usefixtures("one_torch_thread")


class Interrupted(Exception):
    pass


SETTINGS = dict(
    max_steps=6, batch_size=4, checkpoint_every=2, init_heads="random", hidden=16, seed=7,
    max_prompt_tokens=24, progress=False, validation_fraction=0.25,
)


def weights(folder):
    return load_file(folder / "model.safetensors")


def test_interrupted_run_resumes_to_the_same_weights(tmp_path):
    table = make_tiny_table(n_repeats=2)  # 12 prompts: 9 train, 3 validation, 3 steps per epoch
    straight, report = train_finetuned_router(table, tmp_path / "straight", **SETTINGS)
    assert report["steps"] == 6 and report["steps_per_epoch"] == 3 and len(report["validation_history"]) == 2
    assert not checkpoint_dir_for(tmp_path / "straight").exists()  # removed after success

    def stop_at_4(step):
        if step == 4:
            raise Interrupted

    with pytest.raises(Interrupted):
        train_finetuned_router(table, tmp_path / "resumed", on_step=stop_at_4, **SETTINGS)
    checkpoints = checkpoint_dir_for(tmp_path / "resumed")
    assert latest_checkpoint(checkpoints).name == "checkpoint-0000004"
    assert (latest_checkpoint(checkpoints) / "model.safetensors").exists()
    assert not (tmp_path / "resumed").exists()  # nothing half-written where the router goes
    _, resumed_report = train_finetuned_router(table, tmp_path / "resumed", **SETTINGS)
    assert resumed_report["resumed_from"].endswith("checkpoint-0000004")

    a, b = weights(tmp_path / "straight"), weights(tmp_path / "resumed")
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    # The encoder really was trained.
    fresh = AutoModel.from_pretrained(tmp_path / "straight")
    assert fresh.config.predictor_kind == "mlp"
    report_file = json.loads((tmp_path / "straight" / "training_report.json").read_text())
    assert report_file["encoder_fine_tuned"] is True


def stop_at_2(step):
    if step == 2:
        raise Interrupted


def test_checkpoints_of_another_run_are_not_resumed(tmp_path):
    table = make_tiny_table(n_repeats=2)
    with pytest.raises(Interrupted):
        train_finetuned_router(table, tmp_path / "r", on_step=stop_at_2, **SETTINGS)
    with pytest.raises(ValueError, match="other data or settings"):
        train_finetuned_router(table, tmp_path / "r", **{**SETTINGS, "seed": 8})


def test_refuses_existing_router_before_training(tmp_path, knn_router):
    knn_router.save_pretrained(tmp_path / "r")
    with pytest.raises(FileExistsError, match="already holds a router"):
        train_finetuned_router(make_tiny_table(2), tmp_path / "r", **SETTINGS)
