"""
Whether a prompt is in the distribution the router was *trained* on, remembered prompts left out:
what judged exploration samples at its out-of-distribution rate, and what
`carrot_out_of_trained_distribution_share` reports.

A kNN router's support (and `in_distribution`) is measured against its whole memory, prompts
remembered under `--learn` included: right for routing, since a remembered prompt is a neighbour with
a label. For exploration it ends the higher rate too soon. With one or two labels per remembered
prompt, a new task's first handful of remembered prompts makes the next ones "in distribution",
while most candidates' predictions there still come from far-away training prompts. On RouterBench's
new task (MBPP traffic for a router trained on ARC and Winogrande) the start router flagged 77% of
MBPP's prompts, but only 5 to 11% of the stream was flagged once learning began
(docs/exploration-learning.md). Measured against the rows it was trained on, the flag stays until
the router is retrained on the new labels.
"""

from __future__ import annotations

import torch


def trained_in_distribution(router, embeddings: torch.Tensor) -> list[bool] | None:
    """
    Per prompt of `embeddings (batch, hidden)`: support among the memory's trained rows (the first
    `knn_memory_size − knn_remembered_rows`) above `config.support_threshold`, as `in_distribution` is
    decided. None when that is not measurable or is the routing flag itself: a router that is not kNN,
    has no support statistics, measures support against a table of its own, or has remembered nothing.
    """
    config, reliability = router.config, router.reliability
    if config.predictor_kind != "knn" or reliability is None or reliability.support_embeddings is not None:
        return None
    memory = router.predictor._rows()[0]  # one consistent snapshot, as routing reads it
    trained = memory.shape[0] - config.knn_remembered_rows
    if config.knn_remembered_rows <= 0 or trained <= 0:
        return None
    with torch.inference_mode():
        similarity = embeddings.to(memory.device, memory.dtype) @ memory[:trained].T
        top = similarity.topk(min(config.support_k, trained), dim=1).values.mean(1)
        support = reliability.support_from_similarity(top)
    return (support > config.support_threshold).tolist()
