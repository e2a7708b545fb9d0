"""The per-model summary a collection ends with: score, tokens, $ per 1,000 prompts, latency, failures."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

from .table_building import ANSWERED, FAILED, NOT_ASKED


def summarise(rows: Sequence[dict], models: Sequence[str]) -> list[dict]:
    """
    Per model: prompts, answered, failed, not asked, unscored (answered but no score), mean score
    (over scored cells), mean output tokens, realised $ per 1,000 prompts (over answered cells), p50
    latency (s), and judge $ spent on its answers.
    """
    summary = []
    for model in models:
        mine = [r for r in rows if r["model"] == model]
        answered = [r for r in mine if r["status"] == ANSWERED]
        scored = [r["score"] for r in answered if r["score"] is not None]
        outputs = [r["output_tokens"] for r in answered if r["output_tokens"] is not None]
        costs = [r["cost"] for r in answered if r["cost"] is not None]
        latencies = [r["latency_s"] for r in answered if r["latency_s"] is not None]
        summary.append({
            "model": model,
            "prompts": len(mine),
            "answered": len(answered),
            "failed": sum(r["status"] == FAILED for r in mine),
            "not_asked": sum(r["status"] == NOT_ASKED for r in mine),
            "unscored": len(answered) - len(scored),
            "score": statistics.fmean(scored) if scored else None,
            "mean_output_tokens": statistics.fmean(outputs) if outputs else None,
            "cost_per_1000": 1000 * statistics.fmean(costs) if costs and len(costs) == len(answered) else None,
            "p50_latency_s": statistics.median(latencies) if latencies else None,
            "judge_cost": sum(r["judge_cost"] or 0.0 for r in answered),
        })
    return summary


def format_summary(summary: Sequence[dict]) -> str:
    """The per-model summary as an aligned text table."""
    def number(value, pattern):
        return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, pattern)

    width = max([len("model")] + [len(s["model"]) for s in summary])
    lines = [f"{'model':<{width}}  {'score':>6}  {'answered':>8}  {'failed':>6}  {'unscored':>8}  "
             f"{'out tok':>8}  {'$/1k prompts':>12}  {'p50 s':>7}"]
    for s in summary:
        lines.append(
            f"{s['model']:<{width}}  {number(s['score'], '.3f'):>6}  {s['answered']:>8}  {s['failed']:>6}  "
            f"{s['unscored']:>8}  {number(s['mean_output_tokens'], '.1f'):>8}  {number(s['cost_per_1000'], '.4f'):>12}  "
            f"{number(s['p50_latency_s'], '.3f'):>7}"
        )
    return "\n".join(lines)
