"""
Prompts shared between the data a router (or a baseline) learnt from and the split it is judged on.

A prompt seen in training and again in the test split inflates every metric; evaluation refuses
baselines trained on the evaluated prompts and reports how many test prompts a router has seen,
whenever that can be known:

- from the router folder's `training_report.json` (written by `carrot train`): its data source and
  split are read again and compared prompt by prompt;
- for a kNN router, from its memory: a test prompt whose embedding is identical to a stored one
  (cosine ≥ 1 − 1e-5) was in the training data.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
from torch.nn import functional as F

IDENTICAL_COSINE = 1 - 1e-5


def _normalised(prompt: str) -> str:
    return " ".join(prompt.split())


def shared_prompts(first: Sequence[str], second: Sequence[str]) -> int:
    """How many prompts of `second` also occur in `first` (whitespace-insensitive exact match)."""
    seen = {_normalised(p) for p in first}
    return sum(_normalised(p) in seen for p in second)


def knn_memory_overlap(router, test_embeddings: torch.Tensor, chunk: int = 4096) -> int | None:
    """
    How many test prompts (embeddings `(n, hidden)` from this router's encoder) are identical to a
    prompt in a kNN router's memory; None for routers without a memory.
    """
    memory = getattr(router.predictor, "embeddings", None)
    if router.config.predictor_kind != "knn" or memory is None or memory.numel() == 0:
        return None
    memory = F.normalize(memory.float(), dim=1)
    queries = F.normalize(torch.as_tensor(test_embeddings).float(), dim=1)
    found = 0
    for start in range(0, queries.shape[0], chunk):
        similarity = queries[start : start + chunk] @ memory.T
        found += int((similarity.max(dim=1).values >= IDENTICAL_COSINE).sum())
    return found


def reported_training_prompts(router_source) -> tuple[list[str], str] | None:
    """
    The prompts a router was trained on, read again from the source its `training_report.json`
    names, with a description; None when the folder has no report or the data cannot be read here.
    """
    from carrot_hub.data import load_routing_table

    report_path = Path(str(router_source)) / "training_report.json"
    if not report_path.is_file():
        return None
    try:
        data = json.loads(report_path.read_text(encoding="utf-8")).get("data") or {}
        source, split = data["source"], data.get("split") or "train"
        table = load_routing_table(source, split=split)
    except Exception:  # an old report, a moved data set, no network: the overlap is then unknown
        return None
    return table.prompts, f"its training data ({source}, split {split!r}, per training_report.json)"


def router_training_overlap(router, router_source, test_prompts: Sequence[str], test_embeddings=None) -> dict | None:
    """
    `{"shared_prompts", "of", "method"}`: how many of `test_prompts` the router was trained on, by
    the first method that applies (see the module docstring); None when it cannot be known.
    """
    reported = reported_training_prompts(router_source)
    if reported is not None:
        prompts, method = reported
        return {"shared_prompts": shared_prompts(prompts, test_prompts), "of": len(test_prompts), "method": method}
    if test_embeddings is not None:
        found = knn_memory_overlap(router, test_embeddings)
        if found is not None:
            return {"shared_prompts": found, "of": len(test_prompts),
                    "method": "test prompts identical to a prompt in the kNN memory (embedding cosine ≥ 1 − 1e-5)"}
    return None


__all__ = ["knn_memory_overlap", "reported_training_prompts", "router_training_overlap", "shared_prompts"]
