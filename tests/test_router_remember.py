"""CarrotRouter.remember: observed cells join a kNN router's memory without retraining, bounded by a cap."""

import json
import threading

import pytest
import torch

from carrot_hub.building import new_router
from carrot_hub.modeling_carrot import CarrotRouter

from .conftest import TINY_MODELS, TINY_PRICES, TINY_PROMPTS

NEW_PROMPTS = ["Translate 'good morning' into French.", "Summarise the plot of Hamlet in one sentence."]


@pytest.fixture
def router(saved_knn_router):
    """A fresh copy of the tiny kNN router (k = 2, 6 training rows) that a test may grow."""
    return CarrotRouter.from_pretrained(saved_knn_router)


def test_remembered_cells_are_observed_for_their_model_only(router):
    before = router.predictor.quality_observed.clone()
    report = router.remember(NEW_PROMPTS, "small-model", [1.0, 0.0], [17, None])
    assert report == {"added": 2, "filled": 0, "evicted": 0, "memory_size": 8, "remembered_rows": 2}
    memory = router.predictor
    assert torch.equal(memory.quality_observed[:6], before)  # training rows untouched
    small = TINY_MODELS.index("small-model")
    assert memory.quality_observed[6:].tolist() == [[0, 0, 1], [0, 0, 1]]
    assert memory.quality[6:, small].tolist() == [1.0, 0.0]
    assert memory.output_tokens_observed[6:, small].tolist() == [1.0, 0.0]  # None: tokens unobserved
    assert memory.log_output_tokens[6, small].item() == pytest.approx(torch.log1p(torch.tensor(17.0)).item())
    assert torch.allclose(memory.embeddings[6:], router.encode(NEW_PROMPTS).embeddings, atol=1e-5)


def test_remembering_changes_only_the_remembered_models_predictions(router):
    router.predictor.k = 1  # a remembered prompt is then predicted by its own row
    before = router.predict(NEW_PROMPTS)
    router.remember(NEW_PROMPTS, "small-model", [0.0, 1.0], [5, 5])
    after = router.predict(NEW_PROMPTS)
    small = TINY_MODELS.index("small-model")
    others = [i for i in range(3) if i != small]
    assert torch.equal(after.quality[:, others], before.quality[:, others])
    assert torch.equal(after.output_tokens[:, others], before.output_tokens[:, others])
    assert after.quality[:, small].tolist() == [0.0, 1.0]
    assert after.output_tokens[:, small].tolist() == pytest.approx([5.0, 5.0])


def test_one_model_per_prompt(router):
    router.remember(NEW_PROMPTS, ["big-model", "mid-model"], [1.0, 0.5], [3, 4])
    assert router.predictor.quality_observed[6:].tolist() == [[1, 0, 0], [0, 1, 0]]


def test_the_grown_router_reloads_and_routes_identically(router, tmp_path):
    router.remember(NEW_PROMPTS, "small-model", [1.0, 1.0], [5, 5])
    router.save_pretrained(tmp_path / "grown")
    config = json.loads((tmp_path / "grown" / "config.json").read_text())
    assert config["knn_memory_size"] == 8 and config["knn_remembered_rows"] == 2
    assert not list((tmp_path / "grown").glob("*.bin")) and not list((tmp_path / "grown").glob("*.pkl"))
    reloaded = CarrotRouter.from_pretrained(tmp_path / "grown")
    prompts = TINY_PROMPTS + NEW_PROMPTS
    for mu in (0.0, 0.5, 1.0):
        a, b = router.route(prompts, mu=mu), reloaded.route(prompts, mu=mu)
        assert a.models == b.models and torch.equal(a.quality, b.quality)


def test_a_router_saved_before_remember_existed_loads_with_no_remembered_rows(saved_knn_router, tmp_path):
    folder = tmp_path / "old"
    CarrotRouter.from_pretrained(saved_knn_router).save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    config.pop("knn_memory_cap", None), config.pop("knn_remembered_rows", None)
    (folder / "config.json").write_text(json.dumps(config))
    old = CarrotRouter.from_pretrained(folder)
    assert old.config.knn_memory_cap is None and old.config.knn_remembered_rows == 0
    old.remember(NEW_PROMPTS[:1], "big-model", [1.0])
    assert old.config.knn_memory_size == 7


def test_cap_evicts_the_oldest_remembered_rows_first(router):
    router.config.knn_memory_cap = 8
    router.remember(["first remembered prompt"], "big-model", [1.0])
    router.remember(["second remembered prompt"], "big-model", [1.0])
    training = router.predictor.embeddings[:6].clone()
    report = router.remember(["third remembered prompt"], "big-model", [0.0])
    assert report == {"added": 1, "filled": 0, "evicted": 1, "memory_size": 8, "remembered_rows": 2}
    assert torch.equal(router.predictor.embeddings[:6], training)  # training rows kept
    kept = router.predictor.embeddings[6:]
    expected = router.encode(["second remembered prompt", "third remembered prompt"]).embeddings
    assert torch.allclose(kept, expected, atol=1e-5)  # batch padding moves the last digits


def test_training_rows_go_only_when_the_cap_is_below_their_number(router):
    router.config.knn_memory_cap = 5
    training = router.predictor.embeddings.clone()
    report = router.remember(NEW_PROMPTS, "big-model", [1.0, 1.0])
    assert report == {"added": 2, "filled": 0, "evicted": 3, "memory_size": 5, "remembered_rows": 2}
    assert torch.equal(router.predictor.embeddings[:3], training[3:])  # the oldest training rows went


def test_the_default_cap_allows_a_fixed_number_of_remembered_rows(router, monkeypatch):
    monkeypatch.setattr("carrot_hub.modeling_carrot.DEFAULT_MAX_REMEMBERED_ROWS", 1)
    router.remember(NEW_PROMPTS, "big-model", [1.0, 0.0])
    assert router.config.knn_memory_size == 7 and router.config.knn_remembered_rows == 1


@pytest.mark.parametrize(
    "args, message",
    [
        ((NEW_PROMPTS, "gpt-9", [1, 1]), "not a candidate of this router. Known candidates: big-model"),
        ((NEW_PROMPTS, "big-model", [1.0]), "scores has 1 values for 2 prompts"),
        ((NEW_PROMPTS, "big-model", [1.0, 1.5]), r"scores\[1\] is 1.5; it must be a finite number in \[0, 1\]"),
        ((NEW_PROMPTS, "big-model", [1.0, float("nan")]), r"scores\[1\] is nan"),
        ((NEW_PROMPTS, "big-model", [1.0, 1.0], [3, -1]), r"output_tokens\[1\] is -1"),
        ((NEW_PROMPTS, ["big-model"], [1.0, 1.0]), "one candidate name or one per prompt"),
        ((["ok", ""], "big-model", [1.0, 1.0]), "prompt 1 is empty"),
    ],
)
def test_bad_input_is_refused_and_the_memory_is_unchanged(router, args, message):
    before = router.predictor.embeddings.clone()
    with pytest.raises(ValueError, match=message):
        router.remember(*args)
    assert torch.equal(router.predictor.embeddings, before) and router.config.knn_memory_size == 6


def test_an_mlp_router_says_what_it_would_need():
    router = new_router(TINY_MODELS, TINY_PRICES, predictor_kind="mlp", head_hidden_size=8)
    with pytest.raises(TypeError, match="kNN router's memory.*MLP heads.*carrot train --data LOG_DIR"):
        router.remember(NEW_PROMPTS, "big-model", [1.0, 1.0])


def test_routing_goes_on_while_the_memory_grows(router):
    errors, stop = [], threading.Event()

    def route_repeatedly():
        try:
            while not stop.is_set():
                assert len(router.route(TINY_PROMPTS, mu=0.5).models) == len(TINY_PROMPTS)
        except Exception as error:  # noqa: BLE001 - reported below
            errors.append(error)

    thread = threading.Thread(target=route_repeatedly)
    thread.start()
    try:
        for i in range(10):
            router.remember([f"remembered prompt number {i}"], "mid-model", [0.5], [10])
    finally:
        stop.set()
        thread.join(timeout=60)
    assert not errors and router.config.knn_memory_size == 16


def test_a_remembered_prompt_fills_its_rows_cell_instead_of_adding_a_row(router, tmp_path):
    small = TINY_MODELS.index("small-model")
    report = router.remember([TINY_PROMPTS[2]], "small-model", [1.0], [44])  # a training prompt
    assert report["added"] == 0 and report["filled"] == 1 and router.config.knn_memory_size == 6
    assert router.predictor.quality[2, small].item() == 1.0
    assert router.predictor.log_output_tokens[2, small].item() == pytest.approx(torch.log1p(torch.tensor(44.0)).item())
    # a new prompt labelled twice in one call, for two models: one row, both cells, the later label wins
    report = router.remember([NEW_PROMPTS[0]] * 3, ["small-model", "big-model", "small-model"], [0.0, 1.0, 1.0])
    assert report["added"] == 1 and report["filled"] == 0 and router.config.knn_memory_size == 7
    assert router.predictor.quality_observed[6].tolist() == [1, 0, 1] and router.predictor.quality[6, small].item() == 1.0
    report = router.remember([NEW_PROMPTS[0]], "mid-model", [0.5])  # remembered before: filled
    assert report["added"] == 0 and report["filled"] == 1 and router.predictor.quality_observed[6].tolist() == [1, 1, 1]
    router.save_pretrained(tmp_path / "grown")
    back = CarrotRouter.from_pretrained(tmp_path / "grown")
    assert back.config.knn_prompt_keys and torch.equal(back.predictor.prompt_keys, router.predictor.prompt_keys)
    assert back.remember([TINY_PROMPTS[0]], "small-model", [0.0])["filled"] == 1


def test_filling_every_masked_cell_gives_the_retrained_router(tiny_table):
    import numpy as np

    from .conftest import tiny_knn_router

    small = TINY_MODELS.index("small-model")
    masked = tiny_table.select_models(TINY_MODELS)
    masked.scores = masked.scores.copy()
    masked.output_tokens = masked.output_tokens.copy()
    masked.scores[:, small] = np.nan
    masked.output_tokens[:, small] = np.nan
    grown, retrained = tiny_knn_router(masked), tiny_knn_router(tiny_table)
    grown.remember(list(tiny_table.prompts), "small-model", tiny_table.scores[:, small].tolist(),
                   tiny_table.output_tokens[:, small].tolist())
    for name in ("embeddings", "quality", "quality_observed", "log_output_tokens", "output_tokens_observed", "prompt_keys"):
        assert torch.equal(getattr(grown.predictor, name), getattr(retrained.predictor, name)), name
    assert grown.route(NEW_PROMPTS, mu=0.3).models == retrained.route(NEW_PROMPTS, mu=0.3).models


def test_a_router_saved_without_prompt_keys_learns_and_saves_them(router, tmp_path):
    router.config.knn_prompt_keys = False
    router.predictor._non_persistent_buffers_set.add("prompt_keys")
    router.save_pretrained(tmp_path / "old")
    old = CarrotRouter.from_pretrained(tmp_path / "old")
    assert not old.config.knn_prompt_keys and old.predictor.prompt_keys.tolist() == [0] * 6
    assert old.remember([TINY_PROMPTS[0]], "small-model", [1.0])["added"] == 1  # training rows have no key
    old.save_pretrained(tmp_path / "grown")
    back = CarrotRouter.from_pretrained(tmp_path / "grown")
    assert back.config.knn_prompt_keys and back.remember([TINY_PROMPTS[0]], "big-model", [1.0])["filled"] == 1


def test_predictions_follow_every_remembered_label_the_neighbour_cache_is_never_stale(router):
    """The stacked-targets cache is keyed by its buffers: a freed buffer's id() reused by the next one
    (remember() swaps buffers whole) once served old rows (wrong predictions, or an index error)."""
    for step in range(120):
        model = TINY_MODELS[step % len(TINY_MODELS)]
        router.remember([f"{NEW_PROMPTS[step % 2]} (step {step // 2})"], model, [float(step % 2)], [step])
        router.remember([NEW_PROMPTS[step % 2]], model, [float(step % 3 == 0)], [step])  # fills a cell in place of a row
        memory = router.predictor
        uncached, _ = memory._stack_targets(torch.cat([memory.quality, memory.log_output_tokens], 1),
                                            torch.cat([memory.quality_observed, memory.output_tokens_observed], 1))
        cached, _ = memory._stacked_targets(memory.quality, memory.quality_observed, memory.log_output_tokens,
                                            memory.output_tokens_observed)
        assert torch.equal(cached, uncached), step
        if step % 10 == 0:
            assert router.predict(NEW_PROMPTS).quality.shape == (2, len(TINY_MODELS))
