"""`python -m training.train` / `carrot train`: data through load_routing_table, router folder out."""

import json

import numpy as np
import pytest
from transformers import AutoModel

from carrot_hub.data import write_sprout_dataset
from tests.conftest import make_tiny_table
from training.train import main


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def sprout_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("data") / "tiny"
    train = make_tiny_table(n_repeats=3)
    write_sprout_dataset({"train": train}, folder)
    unscored = make_tiny_table(n_repeats=3)
    unscored.scores[:, 2] = np.nan
    unscored.split = "train"
    write_sprout_dataset({"train": unscored}, folder.parent / "unscored")
    return folder


def test_knn_then_refuse_then_overwrite(sprout_folder, tmp_path, capsys):
    out = tmp_path / "router"
    args = ["--data", str(sprout_folder), "--kind", "knn", "--k-grid", "2,4", "--folds", "3", "--out", str(out), "--no-progress"]
    assert main(args) == 0
    report = json.loads((out / "training_report.json").read_text())
    assert report["k"] in (2, 4) and report["data"]["n_prompts"] == 18
    router = AutoModel.from_pretrained(out)
    assert router.config.candidate_models == make_tiny_table().models
    before = (out / "model.safetensors").read_bytes()
    assert main(args) == 2
    assert "already holds a router" in capsys.readouterr().err
    assert (out / "model.safetensors").read_bytes() == before
    assert main([*args, "--overwrite", "--k-grid", "3"]) == 0
    assert json.loads((out / "training_report.json").read_text())["k"] == 3


def test_mlp_with_truncation_options(sprout_folder, tmp_path):
    out = tmp_path / "mlp"
    assert main(["--data", str(sprout_folder), "--kind", "mlp", "--hidden", "8", "--max-epochs", "3",
                 "--max-prompt-tokens", "16", "--out", str(out), "--no-progress"]) == 0
    router = AutoModel.from_pretrained(out)
    assert router.config.predictor_kind == "mlp" and router.config.max_prompt_tokens == 16


def test_unscored_model_is_an_error_or_dropped_on_request(sprout_folder, tmp_path, capsys):
    data = str(sprout_folder.parent / "unscored")
    out = tmp_path / "r"
    assert main(["--data", data, "--kind", "knn", "--out", str(out), "--no-progress"]) == 2
    assert "'small-model'" in capsys.readouterr().err and not out.exists()
    assert main(["--data", data, "--kind", "knn", "--k-grid", "2", "--folds", "2", "--out", str(out),
                 "--drop-unscored-models", "--no-progress"]) == 0
    assert AutoModel.from_pretrained(out).config.candidate_models == ["big-model", "mid-model"]


def test_max_prompt_tokens_beyond_the_encoder_is_a_usage_error(sprout_folder, tmp_path, capsys):
    from carrot_hub.cli import main as carrot

    out = tmp_path / "r"
    args = ["--data", str(sprout_folder), "--max-prompt-tokens", "600", "--out", str(out), "--no-progress"]
    assert carrot(["train", *args]) == 2
    err = capsys.readouterr().err
    assert "--max-prompt-tokens" in err and "512 positions" in err and len(err.strip().splitlines()) == 1
    assert main(args) == 2 and not out.exists()


def test_unreadable_data_is_a_usage_error_naming_the_file(tmp_path, capsys):
    from carrot_hub.cli import main as carrot

    data = tmp_path / "routing.jsonl"
    data.write_text('{"prompt": "fine"}\n{"prompt": \n')
    assert carrot(["train", "--data", str(data), "--out", str(tmp_path / "r"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1].startswith(f"carrot train: error: {data} line 2 is not valid JSON")


def test_overwrite_never_empties_a_folder_that_holds_no_router(sprout_folder, tmp_path, capsys, monkeypatch):
    """`carrot train --out . --overwrite` in a working directory must not delete it (issue 15.3)."""
    from carrot_hub.cli import main as carrot

    work = tmp_path / "work"
    work.mkdir()
    (work / "thesis.tex").write_text("years of work")
    monkeypatch.chdir(work)
    code = carrot(["train", "--data", str(sprout_folder), "--kind", "knn", "--k-grid", "2", "--folds", "3",
                   "--out", ".", "--overwrite", "--no-progress"])
    assert code == 2
    assert "holds no router" in capsys.readouterr().err
    assert (work / "thesis.tex").read_text() == "years of work"


def test_static_encoder_trains_knn_and_mlp(sprout_folder, tmp_path):
    for kind, extra in (("knn", ["--k-grid", "2,4", "--folds", "3"]), ("mlp", ["--hidden", "8", "--max-epochs", "3"])):
        out = tmp_path / f"static-{kind}"
        assert main(["--data", str(sprout_folder), "--kind", kind, "--encoder", "static", *extra,
                     "--out", str(out), "--no-progress"]) == 0
        router = AutoModel.from_pretrained(out)
        assert router.config.encoder_kind == "static" and router.config.predictor_kind == kind
        assert json.loads((out / "training_report.json").read_text())["encoder_kind"] == "static"
        decision = router.route(["Write a function to reverse a linked list in Python.", "☃"], mu=0.5)
        assert decision.fallback_embedding == [False, True]


@pytest.mark.parametrize("options, fragment", [
    (["--encoder", "statik"], "--encoder must be one of transformer, static"),
    (["--encoder", "static", "--kind", "finetune"], "a static encoder trains with --kind knn or mlp"),
    (["--encoder", "static", "--encoder-model", "/no/such/encoder"], "sentence encoder folder '/no/such/encoder' does not exist"),
    (["--static-dimensions", "64"], "apply to --encoder static only"),
    (["--encoder", "static", "--static-dimensions", "1000"], "exceeds the encoder's width 384"),
])
def test_bad_encoder_options_exit_2(sprout_folder, tmp_path, capsys, options, fragment):
    out = tmp_path / "r"
    assert main(["--data", str(sprout_folder), "--kind", "knn", *options, "--out", str(out), "--no-progress"]) == 2
    assert fragment in capsys.readouterr().err and not out.exists()
