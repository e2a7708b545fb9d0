"""Exploration's out-of-distribution flag is measured against the rows the router was trained on: a new kind of
prompt stays flagged (and explored at the higher rate) after --learn has remembered a few of its kind, while the
routing flag, measured against the whole memory, calls it in distribution."""

from __future__ import annotations

from carrot_hub.serving.batching import route_batch
from carrot_hub.serving.trained_distribution import trained_in_distribution

from .collect_fixtures import sample_knn_router, sample_rows

NEW_TASK = [f"Write a haiku about the ocean at dawn, number {i}, with seagulls and salt." for i in range(12)]
QUERY = "Write a haiku about the ocean at dawn, number 99, with seagulls and salt."


def test_remembered_prompts_make_routing_support_but_not_trained_support():
    rows = sample_rows()
    prompts = sorted({row["prompt"] for row in rows})
    router = sample_knn_router(rows, prompts)
    query, known = router.encode([QUERY]).embeddings, router.encode([prompts[0]]).embeddings
    assert router.route([QUERY]).in_distribution == [False]
    assert trained_in_distribution(router, query) is None  # nothing remembered: the routing flag is the same thing

    router.remember(NEW_TASK, router.config.candidate_models[0], [1.0] * len(NEW_TASK))
    assert router.route([QUERY]).in_distribution == [True]  # its remembered neighbours support it for routing
    assert trained_in_distribution(router, query) == [False]  # but the router was never trained on its kind
    assert trained_in_distribution(router, known) == [True]

    options = router.routing_options(mu=0.5)
    plain, measured = (route_batch(router, [QUERY, prompts[0]], [options] * 2, trained_support=flag) for flag in (False, True))
    assert [c.trained_in_distribution for c in plain] == [None, None]
    assert [c.trained_in_distribution for c in measured] == [False, True]
    assert [c.in_distribution for c in measured] == [c.in_distribution for c in plain] == [True, True]
    assert [c.chosen.name for c in measured] == [c.chosen.name for c in plain]  # routing itself is unchanged
