"""
The upper hull of a router's cost–quality points and RouterBench's AIQ, in plain numpy.

The definitions (see also `training.evaluation.metrics`, which re-exports these):

- **Hull**: the non-decreasing upper concave hull of the points. It starts at the cheapest point
  (the highest one if several share that cost), follows the upper convex hull to the point of
  highest quality, and stays flat after it.
- **AIQ**: the area under the hull from its cheapest point to `max_cost`, with the hull extended
  flat to `max_cost`, divided by `max_cost` (RouterBench's `calc_AIQ`).

They live in the library because training-time choices made inside it (the prior shrinkage of
`carrot_hub.reliability`) are scored by out-of-fold AIQ, like every other setting.
"""

from __future__ import annotations

import numpy as np


def as_points(costs, qualities) -> tuple[np.ndarray, np.ndarray]:
    """`(costs, qualities)` as float64 `(n_points,)` arrays; `ValueError` when empty, unequal, non-finite or negative."""
    costs = np.asarray(costs, dtype=np.float64).reshape(-1)
    qualities = np.asarray(qualities, dtype=np.float64).reshape(-1)
    if costs.shape != qualities.shape:
        raise ValueError(f"costs has {costs.size} points but qualities has {qualities.size}.")
    if costs.size == 0:
        raise ValueError("No points: a cost–quality curve needs at least one (cost, quality) point.")
    if not (np.all(np.isfinite(costs)) and np.all(np.isfinite(qualities))):
        raise ValueError("costs and qualities must be finite (a NaN cost or quality means missing data upstream).")
    if np.any(costs < 0):
        raise ValueError("costs must be ≥ 0 dollars.")
    return costs, qualities


def upper_hull(costs, qualities) -> tuple[np.ndarray, np.ndarray]:
    """
    The non-decreasing upper concave hull of the points `(costs[i], qualities[i])`.

    Returns `(hull_costs, hull_qualities)`, sorted by cost, strictly increasing in both, starting at
    the cheapest point (the best one among equally cheap points) and ending at the highest-quality
    point (the cheapest among equally good ones). Between vertices the hull is linear.
    """
    costs, qualities = as_points(costs, qualities)
    order = np.lexsort((-qualities, costs))  # by cost, then best quality first
    costs, qualities = costs[order], qualities[order]
    # Andrew's monotone chain, upper part: drop a vertex when it lies on or below the chord.
    hull: list[tuple[float, float]] = []
    for point in zip(costs.tolist(), qualities.tolist()):
        if hull and point[0] == hull[-1][0]:
            continue  # same cost, lower or equal quality (sorted best first)
        while len(hull) >= 2:
            (x1, y1), (x2, y2) = hull[-2], hull[-1]
            cross = (x2 - x1) * (point[1] - y1) - (y2 - y1) * (point[0] - x1)
            if cross >= 0:  # hull[-1] is not above the chord hull[-2] → point
                hull.pop()
            else:
                break
        hull.append(point)
    hull_costs = np.array([p[0] for p in hull])
    hull_qualities = np.array([p[1] for p in hull])
    # Non-decreasing: stop at the first vertex of maximal quality (flat afterwards).
    top = int(np.argmax(hull_qualities))
    return hull_costs[: top + 1], hull_qualities[: top + 1]


def aiq(costs, qualities, max_cost: float | None = None) -> float:
    """
    RouterBench's AIQ: area under the non-decreasing upper hull, from the cheapest point to
    `max_cost` (the hull extended flat to it), divided by `max_cost`.

    `max_cost` defaults to the largest cost among the points; pass the largest cost among all the
    routers compared so that their AIQs share one cost range. It must be ≥ every point's cost.
    """
    hull_costs, hull_qualities = upper_hull(costs, qualities)
    costs = np.asarray(costs, dtype=np.float64)
    max_cost = float(np.max(costs)) if max_cost is None else float(max_cost)
    if max_cost < float(np.max(costs)) - 1e-15:
        raise ValueError(f"max_cost {max_cost} is below the curve's largest cost {float(np.max(costs))}.")
    if max_cost <= 0:
        raise ValueError("AIQ needs a positive cost range: every point costs $0.")
    xs = np.append(hull_costs, max_cost)
    ys = np.append(hull_qualities, hull_qualities[-1])
    return float(np.sum((xs[1:] - xs[:-1]) * (ys[1:] + ys[:-1]) / 2) / max_cost)


__all__ = ["aiq", "as_points", "upper_hull"]
