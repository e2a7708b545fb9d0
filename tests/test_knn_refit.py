"""training.knn_refit (the label-ceiling benchmark's --refit): k and λ re-chosen on a grown memory, out of fold."""

from __future__ import annotations

import training.knn_refit as knn_refit
from carrot_hub.prior_shrinkage import PRIOR_SHRINK_GRID

from .collect_fixtures import sample_knn_router, sample_rows


def test_refit_needs_enough_fully_scored_rows_and_then_sets_the_best_k_and_shrink(monkeypatch):
    rows = sample_rows()
    prompts = sorted({row["prompt"] for row in rows})
    router = sample_knn_router(rows, prompts)
    router.config.prior_shrink = 1.0  # the start router's choice that no label can move
    report = knn_refit.refit_knn(router, k_grid=(1, 2, 4))
    assert not report["refitted"] and "at least" in report["reason"] and router.config.prior_shrink == 1.0

    monkeypatch.setattr(knn_refit, "MIN_PROBES", 5)
    report = knn_refit.refit_knn(router, k_grid=(1, 2, 4), folds=3)
    assert report["refitted"] and report["previous"] == {"k": 2, "prior_shrink": 1.0}
    assert len(report["aiq"]) == 3 * (len(PRIOR_SHRINK_GRID) if router.reliability is not None else 1)
    best = max(report["aiq"].values())
    assert report["aiq"][f"k={report['k']}, λ={report['prior_shrink']:g}"] == best
    assert router.config.knn_k == router.predictor.k == report["k"] and router.config.prior_shrink == report["prior_shrink"]
