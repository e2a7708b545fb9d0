"""λ (`prior_shrink`) is chosen for the predictions the router shrinks: raw ones when the calibration
layer is off (the kNN default), calibrated ones when it is on."""

import numpy as np
import torch

from carrot_hub.building import fit_knn, new_router
from carrot_hub.data import RoutingTable
from carrot_hub.prior_shrinkage import choose_prior_shrink, leave_one_out_prior
from carrot_hub.reliability import RELIABILITY_LAYERS, cross_fitted, fit_reliability, knn_held_out_predictor
from training.ablation import fitted_layers, set_layers

MODELS = ["cheap-good", "dear-worse"]
PRICES = {"cheap-good": {"input": 1.0, "output": 1.0}, "dear-worse": {"input": 5.0, "output": 10.0}}


def dominated_pair_table(seed: int, n: int = 400):
    """Two kinds of prompt in two embedding clusters; the dominated model is better on kind 1 only;
    squashed, offset raw predictions (a calibration map moves them): `(table, embeddings, raw (n, 2))`."""
    rng = np.random.default_rng(seed)
    kind = np.repeat([0, 1], n // 2)
    probability = np.where(kind[:, None] == 0, [0.9, 0.3], [0.4, 0.7])
    scores = (rng.uniform(size=probability.shape) < probability).astype(float)
    raw = np.clip(0.5 + 0.25 * (probability - 0.5) + 0.15 * rng.standard_normal(probability.shape), 0, 1)
    generator = torch.Generator().manual_seed(seed)
    centres = torch.nn.functional.normalize(torch.randn(2, 32, generator=generator), dim=1)
    embeddings = torch.nn.functional.normalize(centres[torch.as_tensor(kind)] + 0.3 * torch.randn(n, 32, generator=generator), dim=1)
    table = RoutingTable(
        prompts=[f"prompt {i}" for i in range(n)], prompt_ids=[str(i) for i in range(n)], tasks=[f"task {k}" for k in kind],
        models=list(MODELS), scores=scores, input_tokens=np.full((n, 2), 30.0),
        output_tokens=rng.uniform(20, 400, size=(n, 2)).round(), prices={m: dict(p) for m, p in PRICES.items()}, split="train",
    )
    return table, embeddings, raw


def fitted_router(table, embeddings, raw, layers):
    router = new_router(MODELS, PRICES, predictor_kind="knn", knn_k=8, cost_scale=1e-3)
    fit_knn(router, embeddings, table)
    report = fit_reliability(router, table, embeddings, raw, knn_held_out_predictor(embeddings, table, 8), layers=layers)
    return router, report


def shrink_for(predictions, table):
    scores = np.asarray(table.scores, dtype=np.float64)
    return choose_prior_shrink(predictions, leave_one_out_prior(scores), scores, np.asarray(table.cost(), dtype=np.float64), 1e-3)[0]


def test_lambda_is_chosen_for_raw_predictions_when_calibration_is_off():
    table, embeddings, raw = dominated_pair_table(seed=3)
    router, report = fitted_router(table, embeddings, raw, layers={"prior_shrink"})
    chosen = report["calibration"]["chosen"]
    for_calibrated = shrink_for(cross_fitted(chosen, raw, np.asarray(table.scores, dtype=np.float64)), table)
    for_raw = shrink_for(raw, table)
    assert chosen != "identity" and for_calibrated != for_raw  # the case the rule must tell apart
    assert report["calibration"]["method"] == "identity"
    assert router.config.prior_shrink == for_raw
    assert report["prior_shrink_choice"]["uncalibrated"] == for_raw and report["prior_shrink_choice"]["calibrated"] == for_calibrated


def test_ablation_switches_to_the_lambda_of_the_calibration_in_use():
    table, embeddings, raw = dominated_pair_table(seed=3)
    router, report = fitted_router(table, embeddings, raw, layers=RELIABILITY_LAYERS)
    default, _ = fitted_router(table, embeddings, raw, layers={"prior_shrink"})
    fitted = fitted_layers(router, {"reliability": report})
    set_layers(router, fitted, ["prior_shrink"])
    assert router.config.prior_shrink == default.config.prior_shrink != fitted["prior_shrink"]
    set_layers(router, fitted, ["calibration", "prior_shrink"])
    assert router.config.prior_shrink == fitted["prior_shrink"] == report["prior_shrink_choice"]["calibrated"]
