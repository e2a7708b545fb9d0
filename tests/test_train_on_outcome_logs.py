"""`carrot train --data LOG_DIR` on logs as a real gateway leaves them (issue 23, item 13): candidates it
never served, pinned prompts of zero-width characters, and --learn feedback on such a prompt."""

import httpx
import pytest

from carrot_hub.cli import main
from carrot_hub.data import read_routing_logs
from carrot_hub.data.validation import RoutingDataError
from carrot_hub.modeling_carrot import CarrotRouter
from carrot_hub.serving.outcome_log_writer import OutcomeLog

from .conftest import TINY_MODELS, TINY_PRICES, TINY_PROMPTS

ZERO_WIDTH = "\u200b\u200c\u2060"
TRAIN = ["--kind", "knn", "--k-grid", "1,2", "--folds", "2", "--no-progress"]


def serve(folder, models=("big-model", "small-model"), extra_prompts=()):
    """A log as `carrot serve` writes it: prices.json names every candidate, traffic reached `models` only."""
    with OutcomeLog(folder, prices=TINY_PRICES, prices_recorded_on="2026-12-05") as log:
        for i, prompt in enumerate([*TINY_PROMPTS, *extra_prompts]):
            for model in models:
                request_id = f"{model}-{i}"
                log.record({"request_id": request_id, "prompt": prompt, "model": model, "status": "ok",
                            "pinned": prompt in extra_prompts,
                            "usage": {"prompt_tokens": 9, "completion_tokens": 40 if model == "small-model" else 300}})
                log.feedback(request_id, 1.0 if model == "big-model" or i % 2 else 0.0)
        return log.shard


def test_candidates_never_served_do_not_stop_training(tmp_path, one_torch_thread, capsys):
    serve(tmp_path / "log")
    with pytest.warns(UserWarning, match="left out the prices of mid-model, which the log never served"):
        table = read_routing_logs(tmp_path / "log")
    assert sorted(table.prices) == ["big-model", "small-model"]
    assert main(["train", "--data", str(tmp_path / "log"), *TRAIN, "--out", str(tmp_path / "router")]) == 0
    assert sorted(CarrotRouter.from_pretrained(tmp_path / "router").config.candidate_models) == ["big-model", "small-model"]


def test_a_zero_width_prompt_in_the_log_is_named_by_shard_and_line_or_skipped(tmp_path, one_torch_thread, capsys):
    shard = serve(tmp_path / "log", extra_prompts=[ZERO_WIDTH])
    line = 2 * 2 * len(TINY_PROMPTS) + 1  # served + feedback per model and prompt, then the zero-width one
    assert main(["train", "--data", str(tmp_path / "log"), *TRAIN, "--out", str(tmp_path / "router")]) == 2
    err = capsys.readouterr().err.strip()
    assert f"{shard.name}:{line}: prompt is empty" in err and "--on-error skip" in err and len(err.splitlines()) == 1
    with pytest.raises(RoutingDataError, match=f"{shard.name}:{line}: prompt is empty"):
        read_routing_logs(tmp_path / "log")
    with pytest.warns(UserWarning, match="prompt is empty"):  # the warning says what was left out
        assert main(["train", "--data", str(tmp_path / "log"), *TRAIN, "--on-error", "skip",
                     "--out", str(tmp_path / "router")]) == 0
    assert CarrotRouter.from_pretrained(tmp_path / "router").config.knn_memory_size == len(TINY_PROMPTS)


def test_a_zero_width_jsonl_prompt_is_empty_by_the_routers_rule(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_text(f'{{"prompt": "{ZERO_WIDTH}", "model": "a", "score": 1, "input_tokens": 1, "output_tokens": 1}}\n')
    with pytest.raises(RoutingDataError, match="line 1: prompt is empty"):
        read_routing_logs(path)


def test_learn_feedback_on_a_zero_width_prompt_is_recorded_not_a_500(saved_knn_router, tmp_path):
    from carrot_hub.serving.learning import OnlineLearner
    from tests.serve_fixtures import fake_upstreams, running_gateway, upstream_entries

    router = CarrotRouter.from_pretrained(saved_knn_router)
    learner = OnlineLearner(router, tmp_path / "learned", every=0)
    log = OutcomeLog(tmp_path / "log")
    log.record({"request_id": "pinned-zw", "prompt": ZERO_WIDTH, "model": "big-model", "status": "ok",
                "pinned": True, "usage": {"prompt_tokens": 1, "completion_tokens": 1}})
    with fake_upstreams(TINY_MODELS) as upstreams, \
            running_gateway(router, upstream_entries(upstreams), log=log, learner=learner) as (_, server):
        label = httpx.post(server.base_url + "/feedback", json={"request_id": "pinned-zw", "score": 1.0})
    assert label.status_code == 200 and label.json()["status"] == "recorded"
    assert learner.stats["empty_prompt"] == 1 and learner.stats["learned"] == 0
    from carrot_hub.data.outcome_log_reader import read_outcome_log

    assert read_outcome_log(tmp_path / "log").labels["pinned-zw"][0] == 1.0
