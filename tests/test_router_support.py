"""Support, in_distribution and the ood policy: computed, saved, loaded, reported; old routers still route."""

import json
import logging
import math

import pytest
import torch
from safetensors import safe_open

from carrot_hub import CarrotRouter
from carrot_hub.building import fit_knn, fit_support_and_prior, new_router
from carrot_hub.cli import main
from carrot_hub.modeling_carrot import PromptPredictions, top_k_mean_similarity

from .conftest import TINY_MODELS, TINY_PRICES, TINY_PROMPTS
from .reliability_fixtures import clustered_embeddings, encoding, synthetic_table

OFF_TOPIC = "Translate into French: the cathedral bells rang at noon over the snowy village square."


@pytest.fixture(scope="module")
def clustered_knn():
    embeddings, centres = clustered_embeddings()
    table = synthetic_table(embeddings.shape[0])
    router = new_router(TINY_MODELS, TINY_PRICES, predictor_kind="knn", knn_k=4, cost_scale=1e-3)
    fit_knn(router, embeddings, table)
    return router, embeddings, centres


def test_leave_one_out_similarity_leaves_each_row_out():
    memory = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0]]), dim=1)
    loo = top_k_mean_similarity(memory, memory, k=1, exclude_self=True)
    assert torch.allclose(loo[:2], (memory[0] @ memory[1]).expand(2))
    assert loo[2] == pytest.approx(float(memory[1] @ memory[2]))


def test_support_is_the_rank_among_training_prompts(clustered_knn):
    router, embeddings, centres = clustered_knn
    config = router.config
    assert config.support_reference_size == embeddings.shape[0] and config.support_memory_size == 0
    reference = router.reliability.reference
    assert torch.all(reference[1:] >= reference[:-1])
    far = torch.nn.functional.normalize(torch.randn(5, 384, generator=torch.Generator().manual_seed(1)), dim=1)
    predictions = router.predict_encoded(encoding(torch.cat([centres, far])))
    support = predictions.support
    assert torch.all((support >= 0) & (support <= 1))
    assert torch.all(support[:2] == 1.0), "a cluster centre is more similar to the data than any training prompt"
    assert torch.all(support[2:] == 0.0), "random directions are less similar than every training prompt"
    decision = router.decide(predictions, mu=0.5)
    assert decision.in_distribution == [True, True, False, False, False, False, False]
    # in-distribution prompts: support is close to uniform (the definition of the rank)
    noise = 0.15 * torch.randn(40, 384, generator=torch.Generator().manual_seed(9))
    fresh = torch.nn.functional.normalize(centres.repeat_interleave(20, 0) + noise, dim=1)
    held_in = router.predict_encoded(encoding(fresh)).support
    assert 0.1 < float(held_in.mean()) < 0.9


def test_knn_support_follows_a_growing_memory(clustered_knn):
    router, embeddings, _ = clustered_knn
    new_topic = torch.nn.functional.normalize(torch.randn(1, 384, generator=torch.Generator().manual_seed(3)), dim=1)
    before = float(router.predict_encoded(encoding(new_topic)).support[0])
    grown = new_router(TINY_MODELS, TINY_PRICES, predictor_kind="knn", knn_k=4, cost_scale=1e-3)
    fit_knn(grown, embeddings, synthetic_table(embeddings.shape[0]))
    memory = grown.predictor
    near = torch.nn.functional.normalize(new_topic + 0.05 * torch.randn(10, 384, generator=torch.Generator().manual_seed(4)), dim=1)
    memory.fill(
        torch.cat([memory.embeddings, near]),
        torch.cat([memory.quality, torch.ones(10, 3)]),
        torch.cat([torch.expm1(memory.log_output_tokens), torch.full((10, 3), 50.0)]),
    )  # the reference distribution is kept: support is measured against the grown memory
    after = float(grown.predict_encoded(encoding(new_topic)).support[0])
    assert before == 0.0 and after == 1.0


@pytest.mark.parametrize("kind", ["knn", "mlp"])
def test_support_and_calibration_survive_save_and_load(kind, clustered_knn, tmp_path):
    _, embeddings, centres = clustered_knn
    table = synthetic_table(embeddings.shape[0])
    torch.manual_seed(0)
    router = new_router(TINY_MODELS, TINY_PRICES, predictor_kind=kind, knn_k=4, head_hidden_size=16, cost_scale=1e-3)
    if kind == "knn":
        fit_knn(router, embeddings, table)
    else:
        fit_support_and_prior(router, table, embeddings=embeddings)
        assert router.config.support_memory_size == embeddings.shape[0]
    router.fit_support(embeddings if kind == "mlp" else None, k=3, threshold=0.05)
    router.save_pretrained(tmp_path / kind)
    with safe_open(str(tmp_path / kind / "model.safetensors"), framework="pt") as handle:
        keys = set(handle.keys())
    assert "reliability.reference" in keys and ("reliability.support_embeddings" in keys) == (kind == "mlp")
    loaded = CarrotRouter.from_pretrained(tmp_path / kind)
    assert loaded.config.support_k == 3 and loaded.config.support_threshold == 0.05
    probe = encoding(torch.cat([centres, embeddings[:3]]))
    before, after = router.predict_encoded(probe), loaded.predict_encoded(probe)
    assert torch.equal(before.support, after.support)
    assert torch.equal(before.quality, after.quality)
    assert torch.equal(before.quality_low, after.quality_low)


def test_mlp_support_keeps_a_bounded_sample(clustered_knn):
    _, embeddings, _ = clustered_knn
    router = new_router(TINY_MODELS, TINY_PRICES, predictor_kind="mlp", head_hidden_size=16, cost_scale=1e-3)
    router.fit_support(embeddings, max_memory=30, max_reference=16)
    assert router.reliability.support_embeddings.shape == (30, 384)
    assert router.config.support_reference_size == 16
    with pytest.raises(ValueError, match="embeddings"):
        new_router(TINY_MODELS, TINY_PRICES, predictor_kind="mlp", head_hidden_size=16).fit_support()


# --------------------------------------------------------------------------------- ood policy


def manual_predictions(router, support):
    quality = torch.tensor([[0.9, 0.6, 0.2], [0.5, 0.9, 0.85]])
    return PromptPredictions(
        quality=quality,
        output_tokens=torch.tensor([[300.0, 120.0, 40.0]] * 2),
        input_tokens=torch.tensor([30.0, 30.0]),
        truncated=[False, False],
        support=torch.tensor(support),
        quality_low=quality - 0.1,
        quality_high=quality + 0.1,
    )


def test_ood_policies_apply_to_out_of_distribution_prompts_only(knn_router):
    predictions = manual_predictions(knn_router, [0.0, 0.8])
    predicted = knn_router.decide(predictions, mu=0.0, ood="predict")
    assert predicted.in_distribution == [False, True] and predicted.ood_applied == [False, False]
    assert predicted.models == ["big-model", "mid-model"]
    sent = knn_router.decide(predictions, mu=0.0, ood="model:small-model")
    assert sent.models == ["small-model", "mid-model"] and sent.ood_applied == [True, False]
    assert sent.ood_policy == "model:small-model"
    prior = knn_router.reliability.prior
    by_prior = knn_router.decide(predictions, mu=0.0, ood="prior")
    assert by_prior.models[0] == TINY_MODELS[int(prior.argmax())] and by_prior.models[1] == "mid-model"
    assert by_prior.ood_applied == [True, False]
    record = by_prior.to_records()[0]
    assert record["support"] == 0.0 and record["in_distribution"] is False and record["ood_applied"] is True
    assert record["predictions"]["big-model"]["quality_low"] == pytest.approx(0.8)


def test_ood_policy_from_the_config(knn_router):
    config = knn_router.config
    try:
        config.ood_policy = "model:small-model"
        decision = knn_router.decide(manual_predictions(knn_router, [0.0, 0.8]), mu=0.0)
        assert decision.models[0] == "small-model" and decision.ood_policy == "model:small-model"
    finally:
        config.ood_policy = "predict"


@pytest.mark.parametrize(
    "ood, allowed, message",
    [
        ("guess", None, "must be 'predict', 'prior' or 'model:<candidate name>'"),
        ("model:gpt-99", None, "not a candidate"),
        ("model:small-model", ["big-model", "mid-model"], "which `allowed` excludes"),
        (3, None, "must be 'predict'"),
    ],
)
def test_bad_ood_policy_is_a_clear_error(knn_router, ood, allowed, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace("`", ".")):
        knn_router.route(TINY_PROMPTS[:1], ood=ood, allowed=allowed)


def test_bad_ood_policy_in_the_config_is_refused():
    with pytest.raises(ValueError, match="not a candidate"):
        new_router(TINY_MODELS, TINY_PRICES, ood_policy="model:nobody")


# ------------------------------------------------------------------------------- old routers


@pytest.fixture(scope="module")
def old_router_folder(tiny_table, tmp_path_factory):
    """A router as saved before support existed: no reliability tensors, no support fields in config.json."""
    router = new_router(TINY_MODELS, TINY_PRICES, predictor_kind="knn", knn_k=2, cost_scale=1e-3)
    embeddings = router.encode(tiny_table.prompts).embeddings
    router.predictor.fill(embeddings, torch.as_tensor(tiny_table.scores, dtype=torch.float32),
                          torch.as_tensor(tiny_table.output_tokens, dtype=torch.float32))
    router.config.knn_memory_size = embeddings.shape[0]
    folder = tmp_path_factory.mktemp("old") / "router"
    router.save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    for key in ("support_k", "support_reference_size", "support_memory_size", "support_threshold", "ood_policy",
                "calibration_knots", "calibration_method", "shrink_floor", "prior_shrink",
                "ood_pessimism", "ood_pessimism_support"):
        config.pop(key)
    (folder / "config.json").write_text(json.dumps(config))
    return folder, router


def test_old_router_routes_as_before_with_support_unknown(old_router_folder, caplog):
    folder, original = old_router_folder
    with caplog.at_level(logging.WARNING):
        loaded = CarrotRouter.from_pretrained(folder)
    notices = [r.getMessage() for r in caplog.records if "support" in r.getMessage()]
    assert len(notices) == 1 and "\n" not in notices[0] and "unknown" in notices[0]
    assert loaded.reliability is None
    for mu in (0.0, 0.5, 1.0):
        before, after = original.route(TINY_PROMPTS, mu=mu), loaded.route(TINY_PROMPTS, mu=mu, ood="prior")
        assert after.models == before.models
        assert torch.equal(after.quality, before.quality)
    assert torch.isnan(after.support).all() and after.in_distribution == [None] * len(TINY_PROMPTS)
    assert after.ood_applied == [False] * len(TINY_PROMPTS)
    record = after.to_records()[0]
    assert record["support"] is None and record["in_distribution"] is None
    assert record["predictions"]["big-model"]["quality_low"] == record["predictions"]["big-model"]["quality"]


def test_old_router_in_the_cli_reports_unknown_support(old_router_folder, capsys):
    folder, _ = old_router_folder
    code = main(["route", "--model", str(folder), "--format", "jsonl", TINY_PROMPTS[0]])
    out, err = capsys.readouterr()
    assert code == 0, err
    record = json.loads(out)
    assert record["support"] is None and record["in_distribution"] is None


# --------------------------------------------------------------------------- CLI and pipeline


def test_cli_reports_support_and_refuses_a_bad_ood(saved_knn_router, capsys):
    code = main(["route", "--model", str(saved_knn_router), "--format", "jsonl", TINY_PROMPTS[0], OFF_TOPIC])
    out, err = capsys.readouterr()
    assert code == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    assert all(0.0 <= line["support"] <= 1.0 for line in lines)
    assert all(isinstance(line["in_distribution"], bool) for line in lines)
    assert lines[0]["support"] > lines[1]["support"]
    assert "quality_high" in lines[0]["predictions"]["big-model"]
    code = main(["route", "--model", str(saved_knn_router), "--mu", "0.5", TINY_PROMPTS[0]])
    out, _ = capsys.readouterr()
    assert code == 0 and "support" in out.splitlines()[0]
    code = main(["route", "--model", str(saved_knn_router), "--ood", "sometimes", TINY_PROMPTS[0]])
    _, err = capsys.readouterr()
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "ood policy" in lines[0] and "Traceback" not in err


def test_pipeline_reports_support_and_takes_ood(knn_router):
    from transformers import pipeline

    routing = pipeline("llm-routing", model=knn_router)
    result = routing(OFF_TOPIC, mu=0.0, ood="model:small-model")
    assert 0.0 <= result["support"] <= 1.0 and isinstance(result["in_distribution"], bool)
    assert result["ood_policy"] == "model:small-model"
    if result["in_distribution"] is False:
        assert result["model"] == "small-model" and result["ood_applied"]
    with pytest.raises(ValueError, match="not a candidate"):
        routing(OFF_TOPIC, ood="model:nobody")
    direct = knn_router.route([OFF_TOPIC], mu=0.0, ood="model:small-model")
    assert math.isclose(result["support"], float(direct.support[0]), abs_tol=1e-6)
