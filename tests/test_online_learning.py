"""OnlineLearner (`carrot serve --learn`): feedback grows the router, saved as new folders, never over the user's."""

import json

import pytest

from carrot_hub.modeling_carrot import CarrotRouter
from carrot_hub.serving.learning import OnlineLearner, latest_snapshot
from carrot_hub.serving.outcome_log_writer import OutcomeLog

from .conftest import TINY_MODELS, TINY_PRICES

PROMPTS = ["Translate 'good morning' into French.", "Summarise the plot of Hamlet in one sentence.", "What is 7 * 8?"]


@pytest.fixture
def router(saved_knn_router):
    return CarrotRouter.from_pretrained(saved_knn_router)


def serve_and_label(log, learner, request_id, prompt, model, score, tokens=25):
    log.record({"request_id": request_id, "prompt": prompt, "model": model, "status": "ok",
                "usage": {"prompt_tokens": 9, "completion_tokens": tokens}})
    learner.on_feedback(request_id, score, log.feedback(request_id, score))


def test_feedback_is_learned_and_saved_every_n_labels_into_new_folders(router, saved_knn_router, tmp_path):
    original = {p.name: p.read_bytes() for p in saved_knn_router.iterdir() if p.is_file()}
    log = OutcomeLog(tmp_path / "log")
    learner = OnlineLearner(router, tmp_path / "grown", every=2, keep=None)
    for i, prompt in enumerate(PROMPTS):
        serve_and_label(log, learner, f"r{i}", prompt, "small-model", 1.0)
    assert router.config.knn_remembered_rows == 3 and learner.stats["learned"] == 3
    assert len(learner.saved) == 1  # after the 2nd label
    last = learner.close()
    assert len(learner.saved) == 2 and last == latest_snapshot(tmp_path / "grown")
    note = json.loads((last / "learning.json").read_text())
    assert note["labels_learned"] == 3 and note["remembered_rows"] == 3
    assert (last / "README.md").is_file()
    assert not list((tmp_path / "grown").glob(".*tmp"))  # no temporary folder left
    reloaded = CarrotRouter.from_pretrained(last)
    assert reloaded.config.knn_memory_size == 9
    assert reloaded.route(PROMPTS, mu=0.5).models == router.route(PROMPTS, mu=0.5).models
    # the folder the router came from is untouched
    assert {p.name: p.read_bytes() for p in saved_knn_router.iterdir() if p.is_file()} == original


def test_old_snapshots_beyond_keep_are_removed(router, tmp_path):
    log = OutcomeLog(tmp_path / "log")
    learner = OnlineLearner(router, tmp_path / "grown", every=1, keep=1)
    for i, prompt in enumerate(PROMPTS[:2]):
        serve_and_label(log, learner, f"r{i}", prompt, "big-model", 1.0)
    snapshots = [p for p in (tmp_path / "grown").iterdir() if p.is_dir()]
    assert snapshots == [latest_snapshot(tmp_path / "grown")]


def test_what_cannot_be_learned_is_counted_not_learned(router, tmp_path):
    log = OutcomeLog(tmp_path / "log", log_prompts=False)
    learner = OnlineLearner(router, tmp_path / "grown", every=0)
    serve_and_label(log, learner, "hashed", PROMPTS[0], "big-model", 1.0)
    plain = OutcomeLog(tmp_path / "log2")
    serve_and_label(plain, learner, "r1", PROMPTS[1], "big-model", 1.0)
    learner.on_feedback("r1", 0.0, plain.feedback("r1", 0.0))  # a second label for the same request
    learner.on_feedback("r2", 1.0, {"prompt": "x", "model": "not-a-candidate"})
    learner.on_feedback("r4", 1.0, {"prompt": "\u200b\u2060", "model": "big-model"})  # pinned, zero-width only
    assert learner.stats == {"learned": 1, "repeated": 1, "without_prompt": 1, "empty_prompt": 1, "unknown_model": 1,
                             "saves": 0}
    assert router.config.knn_remembered_rows == 1
    with pytest.raises(ValueError, match=r"score must be in \[0, 1\]"):
        learner.on_feedback("r3", 2.0, {"prompt": "x", "model": "big-model"})


def test_the_learner_never_writes_into_a_router_folder(router, saved_knn_router, tmp_path):
    with pytest.raises(ValueError, match="holds a router"):
        OnlineLearner(router, saved_knn_router)
    with pytest.raises(ValueError, match="every must be"):
        OnlineLearner(router, tmp_path / "grown", every=-1)


def test_an_mlp_router_cannot_learn_online(tmp_path):
    from carrot_hub.building import new_router

    mlp = new_router(TINY_MODELS, TINY_PRICES, predictor_kind="mlp", head_hidden_size=8)
    with pytest.raises(TypeError, match="kNN router's memory"):
        OnlineLearner(mlp, tmp_path / "grown")


def test_close_without_new_labels_saves_nothing(router, tmp_path):
    learner = OnlineLearner(router, tmp_path / "grown")
    assert learner.close() is None and not (tmp_path / "grown").exists()


def test_concurrent_feedback_is_all_learned_in_batches(router, tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    import time

    calls = []
    remember = router.remember

    def slow_first_remember(prompts, *rest):
        if not calls:
            time.sleep(0.3)  # the others queue up meanwhile
        calls.append(len(prompts))
        return remember(prompts, *rest)

    router.remember = slow_first_remember
    log = OutcomeLog(tmp_path / "log")
    learner = OnlineLearner(router, tmp_path / "grown", every=0)
    prompts = [f"concurrent question number {i}" for i in range(24)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda i: serve_and_label(log, learner, f"c{i}", prompts[i], "mid-model", 0.5), range(24)))
    assert learner.stats["learned"] == 24 == sum(calls) and router.config.knn_remembered_rows == 24
    assert len(calls) < 24  # labels that queued up were encoded together
    assert learner.close() is not None
