"""Speed paths of the router: predictions reused across μ and prices, many μ at once, thread safety."""

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

from carrot_hub.modeling_carrot import choose_candidates, predicted_cost

from .conftest import TINY_PROMPTS

MIXED = [p * (1 + i % 3) for i, p in enumerate(TINY_PROMPTS * 2)]  # different lengths, so sorting matters


def test_decide_from_predictions_equals_route(knn_router):
    predictions = knn_router.predict(MIXED, batch_size=4)
    for mu, prices in ((0.0, None), (0.7, {"big-model": {"output": 1.0}}), (1.0, None)):
        direct = knn_router.route(MIXED, mu=mu, prices=prices, batch_size=5)
        reused = knn_router.decide(predictions, mu=mu, prices=prices)
        assert reused.models == direct.models
        torch.testing.assert_close(reused.cost, direct.cost)


def test_many_mu_at_once_equals_one_at_a_time(knn_router):
    predictions = knn_router.predict(MIXED)
    input_prices, output_prices = knn_router.resolve_prices()
    cost = predicted_cost(predictions.input_tokens, predictions.output_tokens, input_prices, output_prices)
    mus = torch.linspace(0, 1, 57)
    indices, utility, _ = choose_candidates(predictions.quality, cost, mus, knn_router.config.cost_scale)
    assert indices.shape == (57, len(MIXED)) and utility.shape == (57, len(MIXED), 3)
    for row, mu in enumerate(mus.tolist()):
        assert indices[row].tolist() == knn_router.decide(predictions, mu=mu).model_indices.tolist()


def test_batch_size_and_order_do_not_change_results(knn_router):
    reference = knn_router.predict(MIXED, batch_size=1)
    for batch_size in (3, 64):
        other = knn_router.predict(MIXED, batch_size=batch_size)
        torch.testing.assert_close(other.quality, reference.quality, atol=1e-5, rtol=0)
        torch.testing.assert_close(other.output_tokens, reference.output_tokens, rtol=1e-4, atol=1e-3)


def test_concurrent_route_calls_match_sequential(knn_router):
    settings = [(0.3 * i, batch) for i, batch in zip(range(4), (1, 3, 5, 64))]
    sequential = [knn_router.route(MIXED, mu=mu, batch_size=batch) for mu, batch in settings]
    results, errors = [None] * len(settings), []
    barrier = threading.Barrier(len(settings))

    def work(slot, mu, batch):
        try:
            barrier.wait()
            results[slot] = knn_router.route(MIXED, mu=mu, batch_size=batch)
        except Exception as error:  # noqa: BLE001
            errors.append(error)

    threads = [threading.Thread(target=work, args=(slot, mu, batch)) for slot, (mu, batch) in enumerate(settings)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    for got, expected in zip(results, sequential):
        assert got.models == expected.models
        torch.testing.assert_close(got.quality, expected.quality, atol=1e-5, rtol=0)
        assert got.input_tokens.tolist() == expected.input_tokens.tolist()


def test_predict_encoded_needs_no_encoder(knn_router, monkeypatch):
    encoding = knn_router.encode(MIXED)
    expected = knn_router.predict(MIXED)

    def no_encoder(*args, **kwargs):
        raise AssertionError("the encoder ran")

    monkeypatch.setattr(knn_router.encoder, "forward", no_encoder)
    predictions = knn_router.predict_encoded(encoding, batch_size=4)
    torch.testing.assert_close(predictions.quality, expected.quality)
    assert knn_router.decide(predictions, mu=0.4).models == knn_router.decide(expected, mu=0.4).models


@pytest.mark.slow
def test_speed_benchmark_runs_and_reports_every_figure(tmp_path):
    """`scripts/bench_speed.py` on a slice of the real prompts: the JSON line holds the issue's figures."""
    script = Path(__file__).resolve().parents[1] / "scripts" / "bench_speed.py"
    env = {**os.environ, "CARROT_HUB_CACHE": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, str(script), "--limit", "96", "--latency-samples", "8", "--repeats", "1", "--dtype", "auto",
         "--static-mlp", str(tmp_path / "static-mlp")],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    assert figures["n_prompts"] == 96
    for kind in ("static", "transformer"):
        for key in ("route_prompts_per_s", "encoder_prompts_per_s", "latency_p50_ms", "peak_rss_mb", "model_safetensors_mb"):
            assert figures[kind][key] > 0, (kind, key)
    for key in ("tokenizer_prompts_per_s", "backend_tokenizer_prompts_per_s", "route_cold_cache_prompts_per_s",
                "route_short_prompts_per_s"):
        assert figures["static"][key] > 0, key
    assert figures["static"]["encoder_dtype"] == "float32"
    assert figures["transformer"]["encoder_dtype"] in ("float32", "bfloat16")
    assert figures["static"]["model_safetensors_mb"] < figures["transformer"]["model_safetensors_mb"]
    for key in ("decide_10k_x_1000_s", "from_embeddings_prompts_per_s"):
        assert figures[key] > 0, key
    assert set(figures["static_vs_transformer"]) == {"route_throughput_ratio", "latency_p50_ratio", "model_safetensors_ratio"}
    assert figures["static_mlp"]["route_prompts_per_s"] > 0 and figures["static_mlp"]["latency_p50_ms"] > 0
