"""Adding / removing candidates: old candidates' predictions unchanged, the new one learnt, bad input."""

import numpy as np
import pytest
import torch
from huggingface_hub import ModelCard

from carrot_hub.building import new_router
from training.candidates import MIN_ROWS, CandidateError, add_candidate, remove_candidate
from carrot_hub.data import RoutingTable
from model_card.build import build_model_card

from .conftest import TINY_MODELS, TINY_PRICES, TINY_PROMPTS

PROBES = [
    "Write a function in Python that sorts a list of numbers.",
    "Which of these is a mammal? A) shark B) whale C) trout",
    "Anna thanked Maria because _ had helped her. A) Anna B) Maria",
    "What is the boiling point of water at sea level?",
]


def newcomer_table(n_repeats: int = 10, observed: int | None = None) -> RoutingTable:
    """Scores of a 'coder-model' that is right on code prompts only, plus a copy of an old column."""
    prompts = [f"{p} (take {r})" for r in range(n_repeats) for p in TINY_PROMPTS]
    is_code = np.array([i % len(TINY_PROMPTS) < 2 for i in range(len(prompts))], dtype=np.float32)
    scores = np.stack([is_code, 1 - is_code], axis=1)
    tokens = np.stack([np.where(is_code > 0, 200.0, 20.0), np.full(len(prompts), 50.0)], axis=1)
    if observed is not None:
        scores[observed:, 0] = np.nan
    return RoutingTable(
        prompts=prompts,
        prompt_ids=[f"n{i}" for i in range(len(prompts))],
        tasks=["t"] * len(prompts),
        models=["coder-model", "mid-model"],
        scores=scores,
        input_tokens=np.full((len(prompts), 2), 30.0),
        output_tokens=tokens,
        split="train",
    )


@pytest.fixture(scope="module")
def newcomers():
    return newcomer_table()


@pytest.fixture(scope="module")
def mlp_router():
    torch.manual_seed(0)
    return new_router(TINY_MODELS, TINY_PRICES, predictor_kind="mlp", head_hidden_size=32, cost_scale=1e-3)


@pytest.fixture(scope="module")
def probe_embeddings(knn_router_session):
    return knn_router_session.encode(PROBES)


@pytest.fixture(scope="module")
def newcomer_embeddings(knn_router_session, newcomers):
    return knn_router_session.encode(newcomers.prompts).embeddings


@pytest.fixture(scope="module")
def bigger_knn(knn_router_session, newcomers, newcomer_embeddings):
    return add_candidate(
        knn_router_session, "coder-model", newcomers, 0.5, 1.5, parent="someone/tiny-router",
        embeddings=newcomer_embeddings,
    )


def test_knn_add_keeps_old_predictions_exactly(knn_router, newcomers, probe_embeddings, bigger_knn):
    before = knn_router.predict_encoded(probe_embeddings)
    bigger = bigger_knn
    after = bigger.predict_encoded(probe_embeddings)
    assert bigger.config.candidate_models == [*TINY_MODELS, "coder-model"]
    assert bigger.config.prices["coder-model"] == {"input": 0.5, "output": 1.5}
    assert bigger.config.knn_memory_size == knn_router.config.knn_memory_size + len(newcomers)
    assert torch.equal(after.quality[:, :3], before.quality)
    assert torch.equal(after.output_tokens[:, :3], before.output_tokens)
    # the new column is the mean over its own k nearest prompts: right on code, wrong elsewhere
    assert after.quality[0, 3] == 1.0 and after.quality[1, 3] == 0.0
    assert knn_router.config.num_candidates == 3, "the input router must not change"
    for mu in (0.0, 0.3, 1.0):
        old = knn_router.decide(before, mu=mu)
        new = bigger.decide(after, mu=mu, allowed=TINY_MODELS)
        assert new.models == old.models


def test_knn_add_then_remove_is_the_original(knn_router, bigger_knn, tmp_path):
    bigger = bigger_knn
    bigger.save_pretrained(tmp_path / "bigger")
    reloaded = type(bigger).from_pretrained(tmp_path / "bigger")
    back = remove_candidate(reloaded, "coder-model")
    assert back.config.candidate_models == TINY_MODELS
    assert back.config.knn_memory_size == knn_router.config.knn_memory_size
    for key, value in knn_router.state_dict().items():
        assert torch.equal(back.state_dict()[key], value), key
    assert [c["description"].split(" ")[0] for c in back.config.router_changes] == ["added", "removed"]
    assert back.config.parent_router == "someone/tiny-router"


def test_mlp_add_fits_only_the_new_row(mlp_router, newcomers, newcomer_embeddings, probe_embeddings):
    # encoded without the fixture's embeddings: add_candidate's own encoding path
    bigger = add_candidate(mlp_router, "coder-model", newcomers, 0.5, 1.5)
    old_state, new_state = mlp_router.state_dict(), bigger.state_dict()
    for key, value in old_state.items():
        if key.startswith(("predictor.quality.3", "predictor.log_output_tokens.3")):
            assert new_state[key].shape[0] == value.shape[0] + 1
            assert torch.equal(new_state[key][:-1], value), key
        else:
            assert torch.equal(new_state[key], value), key
    before = mlp_router.predict_encoded(probe_embeddings)
    after = bigger.predict_encoded(probe_embeddings)
    # same weights; a matmul with one more output column may round differently in the last bit
    torch.testing.assert_close(after.quality[:, :3], before.quality, rtol=0, atol=1e-6)
    torch.testing.assert_close(after.output_tokens[:, :3], before.output_tokens, rtol=1e-5, atol=1e-3)
    # learnt from frozen features: code prompts (PROBES[0]) get a better score than the others
    assert after.quality[0, 3] > 0.5 > after.quality[1:, 3].max()
    assert after.output_tokens[0, 3] > after.output_tokens[1:, 3].max()
    back = remove_candidate(bigger, "coder-model")
    for key, value in old_state.items():
        assert torch.equal(back.state_dict()[key], value), key


def test_card_records_parent_and_changes(bigger_knn):
    card = ModelCard(build_model_card(bigger_knn, card_date="2025-02-03"))
    assert card.data.base_model == "someone/tiny-router"
    assert "added candidate coder-model" in card.text and "| coder-model | 0.5 | 1.5 |" in card.text


# ------------------------------------------------------------------------------- bad input


def test_adding_an_existing_name_is_refused(knn_router, newcomers):
    with pytest.raises(CandidateError, match="already a candidate"):
        add_candidate(knn_router, "mid-model", newcomers, 1.0, 2.0)


def test_too_few_rows_states_the_threshold(knn_router):
    table = newcomer_table(observed=MIN_ROWS - 1)
    with pytest.raises(CandidateError, match=rf"on {MIN_ROWS - 1} prompts.*at least {MIN_ROWS}"):
        add_candidate(knn_router, "coder-model", table, 1.0, 2.0)


def test_other_bad_additions(knn_router, newcomers):
    with pytest.raises(CandidateError, match="no column 'other-model'"):
        add_candidate(knn_router, "other-model", newcomers, 1.0, 2.0)
    with pytest.raises(CandidateError, match="input price"):
        add_candidate(knn_router, "coder-model", newcomers, -1.0, 2.0)
    with pytest.raises(CandidateError, match="output price"):
        add_candidate(knn_router, "coder-model", newcomers, 1.0, float("nan"))
    with pytest.raises(CandidateError, match="embeddings have shape"):
        add_candidate(knn_router, "coder-model", newcomers, 1.0, 2.0, embeddings=np.zeros((3, 384)))


def test_bad_removals(knn_router):
    with pytest.raises(CandidateError, match="not a candidate.*big-model"):
        remove_candidate(knn_router, "gpt-9")
    single = remove_candidate(remove_candidate(knn_router, "big-model"), "mid-model")
    assert single.config.candidate_models == ["small-model"]
    with pytest.raises(CandidateError, match="only candidate"):
        remove_candidate(single, "small-model")


# ------------------------------------------------------------------- interrupted saves (issue 15.1)

_SLOW_SAVE = """
import signal, sys, time
from pathlib import Path
from carrot_hub.modeling_carrot import CarrotRouter

# Ctrl-C as in a terminal: a suite run as a background job (`cmd &` in a script) starts its children with
# SIGINT ignored, and Python keeps it ignored, so the interruption never arrived and the save ran to exit 0.
signal.signal(signal.SIGINT, signal.default_int_handler)

def half_then_wait(self, directory, *args, **kwargs):
    (Path(directory) / "config.json").write_text('{"half": ')  # killed in the middle of writing
    Path(sys.argv[1]).write_text("saving")
    time.sleep(120)

CarrotRouter.save_pretrained = half_then_wait
from carrot_hub.cli import main
sys.exit(main(sys.argv[2:]))
"""


def _interrupt_remove_model(source, output, signal_number, tmp_path, overwrite):
    import subprocess
    import sys
    import time

    # One marker per call: a marker left by an earlier call would send the signal at once, possibly before the
    # child has even started Python (then it is lost and the child runs to a clean exit 0).
    marker = tmp_path / f"saving-{signal_number}-{output.name}-{overwrite}"
    marker.unlink(missing_ok=True)
    args = ["remove-model", str(source), "mid-model", "--output", str(output)] + (["--overwrite"] if overwrite else [])
    process = subprocess.Popen([sys.executable, "-c", _SLOW_SAVE, str(marker), *args],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while not marker.exists():
        assert process.poll() is None and time.time() < deadline, process.stderr.read()
        time.sleep(0.2)
    process.send_signal(signal_number)
    process.wait(timeout=240)  # generous: on a loaded machine the interrupted process's clean-up alone took over 60 s
    assert process.returncode != 0


@pytest.mark.parametrize("signal_name", ["SIGKILL", "SIGINT"])
def test_interrupted_derived_router_save_keeps_the_source_and_never_blocks_a_rerun(saved_knn_router, tmp_path, signal_name):
    import shutil
    import signal

    from carrot_hub.cli import main
    from carrot_hub.modeling_carrot import CarrotRouter

    source = tmp_path / "router"
    shutil.copytree(saved_knn_router, source)
    weights = (source / "model.safetensors").read_bytes()
    signal_number = getattr(signal, signal_name)
    # --output equal to the source with --overwrite: the original must survive the interruption
    _interrupt_remove_model(source, source, signal_number, tmp_path, overwrite=True)
    assert (source / "model.safetensors").read_bytes() == weights
    assert CarrotRouter.from_pretrained(source).config.candidate_models == TINY_MODELS
    # a new folder: nothing half-written is left at the destination, so the rerun just works
    _interrupt_remove_model(source, tmp_path / "smaller", signal_number, tmp_path, overwrite=False)
    assert not (tmp_path / "smaller").exists()
    assert main(["remove-model", str(source), "mid-model", "--output", str(tmp_path / "smaller")]) == 0
    assert main(["remove-model", str(source), "mid-model", "--output", str(source), "--overwrite"]) == 0
    assert CarrotRouter.from_pretrained(source).config.candidate_models == ["big-model", "small-model"]
    assert CarrotRouter.from_pretrained(tmp_path / "smaller").config.candidate_models == ["big-model", "small-model"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # the killed writer's staging swept
    assert (source / "README.md").is_file()  # save_pretrained writes the card: the folder is a Hub repo
