"""
How good predicted qualities are against observed scores: average ranks, AUROC, the Brier score and
the expected calibration error. The one home of these: evaluation (`training.evaluation.metrics`) reports them
and the reliability fit (`carrot_hub.reliability`) chooses by them, with the same definitions.
"""

from __future__ import annotations

import numpy as np


def average_ranks(values) -> np.ndarray:
    """1-based ranks of `values (n,)`, ties sharing their average rank."""
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(values.size)
    _, first, counts = np.unique(values[order], return_index=True, return_counts=True)
    ranks[order] = np.repeat(first + (counts + 1) / 2.0, counts)
    return ranks


def auroc(labels, predictions) -> float | None:
    """
    Area under the ROC curve of `predictions (n,)` for binary `labels (n,)` (0/1), with ties given
    half credit (the Mann–Whitney statistic): P(a positive's prediction > a negative's). None when
    only one class is present.
    """
    labels = np.asarray(labels, dtype=np.float64).reshape(-1)
    predictions = np.asarray(predictions, dtype=np.float64).reshape(-1)
    positive, negative = labels == 1, labels == 0
    if not np.all(positive | negative):
        raise ValueError("auroc needs 0/1 labels.")
    n_pos, n_neg = int(positive.sum()), int(negative.sum())
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = average_ranks(predictions)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def brier(labels, predictions) -> float:
    """Mean squared difference between predicted quality and the true score over the cells whose label is not NaN."""
    labels = np.asarray(labels, dtype=np.float64)
    predictions = np.asarray(predictions, dtype=np.float64)
    observed = ~np.isnan(labels)
    return float(np.mean((predictions[observed] - labels[observed]) ** 2))


def expected_calibration_error(labels, predictions, bins: int = 15) -> dict:
    """
    Expected calibration error of predicted quality: cells `(n,)` or `(n, m)` (NaN labels are left
    out), predictions clipped to [0, 1], cell in bin b = ⌊prediction · bins⌋ (1.0 in the last one):
    `bins` equal-width bins over [0, 1]. ECE is the count-weighted mean of |mean score − mean
    prediction| over the bins. Returns `{"ece", "n", "bins": [{"lower", "upper", "count",
    "mean_prediction", "mean_score"}]}` (the reliability diagram's data); `ValueError` when no
    label is observed.
    """
    labels = np.asarray(labels, dtype=np.float64).reshape(-1)
    predictions = np.asarray(predictions, dtype=np.float64).reshape(-1)
    if labels.shape != predictions.shape:
        raise ValueError(f"labels has {labels.size} cells but predictions has {predictions.size}.")
    observed = ~np.isnan(labels)
    labels, predictions = labels[observed], np.clip(predictions[observed], 0.0, 1.0)
    if labels.size == 0:
        raise ValueError("No observed scores: calibration cannot be measured.")
    index = np.minimum((predictions * bins).astype(int), bins - 1)
    count = np.bincount(index, minlength=bins)
    score_sum = np.bincount(index, weights=labels, minlength=bins)
    prediction_sum = np.bincount(index, weights=predictions, minlength=bins)
    table = [
        {"lower": b / bins, "upper": (b + 1) / bins, "count": int(count[b]),
         "mean_prediction": float(prediction_sum[b] / count[b]) if count[b] else None,
         "mean_score": float(score_sum[b] / count[b]) if count[b] else None}
        for b in range(bins)
    ]
    ece = float(np.abs(score_sum - prediction_sum).sum() / count.sum())
    return {"ece": ece, "n": int(labels.size), "bins": table}


__all__ = ["auroc", "average_ranks", "brier", "expected_calibration_error"]
