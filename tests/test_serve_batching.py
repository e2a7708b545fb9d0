"""Batched routing off the event loop: batches form, answers match `router.route`, bad options stay per request."""

import asyncio
import time

import pytest

from carrot_hub.modeling_carrot import RoutingOptions
from carrot_hub.serving.batching import RoutingBatcher, route_batch
from tests.conftest import TINY_PROMPTS

# For the batcher's own tests, whose route functions do not decide: any options will do.
ANY_OPTIONS = RoutingOptions(candidate_models=("m",), mu=0.5, input_prices=(1.0,), output_prices=(1.0,))


def test_route_batch_matches_route_per_prompt(knn_router):
    requested = [{}, {"mu": 0.0}, {"mu": 1.0}, {"mu": 0.3, "allowed": ("mid-model", "small-model")},
                 {"mu": 0.0, "max_cost": 1e-5}, {"prices": {"small-model": {"input": 99.0}}}]
    options = [knn_router.routing_options(**values) for values in requested]
    prompts = TINY_PROMPTS[: len(options)]
    choices = route_batch(knn_router, prompts, options)
    for prompt, values, choice in zip(prompts, requested, choices):
        decision = knn_router.route([prompt], **values)
        assert choice.chosen.name == decision.models[0]
        assert choice.mu == decision.mu
        assert choice.chosen.quality == pytest.approx(float(decision.chosen_quality[0]), abs=1e-6)
        assert choice.chosen.cost == pytest.approx(float(decision.chosen_cost[0]), rel=1e-5)
        # Fallbacks: every allowed candidate within max_cost, best utility first.
        finite = [(float(u), name) for name, u in zip(decision.candidate_models, decision.utility[0])
                  if u != float("-inf")]
        assert [c.name for c in choice.ranked] == [name for _, name in sorted(finite, key=lambda x: -x[0])]
    assert [c.name for c in choices[3].ranked] <= ["mid-model", "small-model"]


def test_bad_options_fail_only_their_own_request(knn_router):
    # Options resolved for another router (other candidates) are refused by decide(), for their request only.
    foreign = RoutingOptions(candidate_models=("gpt-17",), mu=0.5, input_prices=(1.0,), output_prices=(1.0,))
    results = route_batch(knn_router, TINY_PROMPTS[:3],
                          [knn_router.routing_options(), foreign, knn_router.routing_options(mu=1.0)])
    assert isinstance(results[1], ValueError) and "this router's" in str(results[1])
    assert results[0].chosen.name and results[2].chosen.name == "small-model"


def test_concurrent_requests_are_routed_together(knn_router):
    sizes = []

    async def main():
        batcher = RoutingBatcher(knn_router, window_s=0.05, max_batch=64, on_batch=lambda n, s: sizes.append(n))
        try:
            choices = await asyncio.gather(*(batcher.route(p, knn_router.routing_options(mu=1.0)) for p in TINY_PROMPTS))
        finally:
            await batcher.aclose()
        return choices

    choices = asyncio.run(main())
    assert sizes == [len(TINY_PROMPTS)]
    assert {c.chosen.name for c in choices} == {"small-model"}


def test_batches_are_capped_and_requests_arriving_during_a_batch_wait_for_the_next():
    sizes = []

    def slow_route(router, prompts, options):
        time.sleep(0.05)
        return [f"choice for {p}" for p in prompts]

    async def main():
        batcher = RoutingBatcher(None, window_s=0.0, max_batch=4, route_fn=slow_route,
                                 on_batch=lambda n, s: sizes.append(n))
        first = asyncio.ensure_future(batcher.route("a", ANY_OPTIONS))
        await asyncio.sleep(0.01)  # the first batch (of one) is running
        rest = await asyncio.gather(*(batcher.route(str(i), ANY_OPTIONS) for i in range(6)))
        await batcher.aclose()
        return await first, rest

    first, rest = asyncio.run(main())
    assert first == "choice for a" and rest == [f"choice for {i}" for i in range(6)]
    assert sizes == [1, 4, 2]


def test_routing_never_blocks_the_event_loop():
    def blocking_route(router, prompts, options):
        time.sleep(0.3)  # a slow encoder pass, holding its thread
        return ["done"] * len(prompts)

    async def main():
        batcher = RoutingBatcher(None, window_s=0.0, route_fn=blocking_route)
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        ticking = asyncio.ensure_future(ticker())
        result = await batcher.route("x", ANY_OPTIONS)
        ticking.cancel()
        await batcher.aclose()
        return result, ticks

    result, ticks = asyncio.run(main())
    assert result == "done"
    assert ticks >= 15  # the loop kept running while the batch was routed


def test_a_failing_batch_fails_its_requests_not_the_batcher():
    calls = []

    def flaky_route(router, prompts, options):
        calls.append(len(prompts))
        if len(calls) == 1:
            raise RuntimeError("encoder exploded")
        return ["ok"] * len(prompts)

    async def main():
        batcher = RoutingBatcher(None, window_s=0.0, route_fn=flaky_route)
        with pytest.raises(RuntimeError, match="exploded"):
            await batcher.route("x", ANY_OPTIONS)
        second = await batcher.route("y", ANY_OPTIONS)
        await batcher.aclose()
        return second

    assert asyncio.run(main()) == "ok"
