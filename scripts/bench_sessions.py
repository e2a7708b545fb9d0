"""
Conversations on a routing table's test prompts: how often each session policy switches models,
and what stickiness and cached input do to quality and spend.

Each test prompt opens a conversation of three turns: the prompt, then two follow-ups drawn (seeded)
from `FOLLOW_UPS` about the same problem. As the gateway does with `--route-on last-user`, every turn
is routed on its last user message alone; the session policy then keeps or moves the conversation:

- `off`: each turn takes the router's own choice for its message;
- `sticky`: turns 2 and 3 go to turn 1's model;
- `upgrade-only`: a turn moves only to a model of higher predicted quality than the session's model.

Quality: the follow-ups are about the conversation's problem, so a turn answered by model m is
scored with m's recorded score on the opening prompt; a conversation's quality is its turns' mean.
Cost: turn t sends the whole conversation so far (the opening prompt's recorded input tokens, the
recorded output tokens of every earlier answer, the follow-ups' tokens) and gets m's recorded output
tokens for the prompt. With cached input, the part of that prefix the same model already processed
(its own last turn's input and answer) is billed at the cached price.

Cached prices: the packaged tables carry none. The script assumes cached input costs
`--cached-ratio` of the input price (default a tenth, the ratio Anthropic and DeepSeek charge for
cache reads; OpenAI charges half, try `--cached-ratio 0.5`): a stated assumption, not a quote.

    python scripts/bench_sessions.py --data zeroeval-2024        # last line: JSON
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time

import numpy as np
import torch

from carrot_hub.cost_quality import aiq
from carrot_hub.data.loading import load_routing_table
from carrot_hub.data.packaged import packaged_table_dir
from carrot_hub.default import default_router

FOLLOW_UPS = (
    "thanks! now explain it to a child",
    "Can you double-check that answer?",
    "Why is that the right answer? Walk me through it.",
    "Summarise your reasoning in one sentence.",
    "Are you sure? Please go over it again.",
    "What is the key step in your solution?",
)
POLICIES = ("off", "sticky", "upgrade-only")
TURNS = 3


def simulate(policy, first, follow, quality_first, quality_follow):
    """
    Models per turn `(n_conversations, TURNS)` for one μ.

    first `(n,)`: the router's choice for each opening prompt; follow `(n, TURNS - 1)`: its choice for
    each follow-up message; quality_first `(n, n_models)`, quality_follow `(n, TURNS - 1, n_models)`:
    the predicted qualities the upgrade-only policy compares.
    """
    n = first.shape[0]
    models = np.empty((n, TURNS), dtype=np.int64)
    models[:, 0] = first
    rows = np.arange(n)
    for turn in range(1, TURNS):
        fresh = follow[:, turn - 1]
        if policy == "off":
            models[:, turn] = fresh
        elif policy == "sticky":
            models[:, turn] = models[:, turn - 1]
        else:
            current = models[:, turn - 1]
            q = quality_follow[:, turn - 1]
            models[:, turn] = np.where(q[rows, fresh] > q[rows, current], fresh, current)
    return models


def conversation_cost(models, input_tokens, output_tokens, follow_tokens, p_in, p_out, p_cached):
    """US$ per conversation `(n,)`: every turn resends the conversation so far; cached where the model saw it."""
    n = models.shape[0]
    rows = np.arange(n)
    prefix = np.zeros(n)  # tokens of the conversation before this turn's new message
    seen = {}  # model column -> (n,) tokens of the prefix that model already processed, per conversation
    total = np.zeros(n)
    for turn in range(TURNS):
        m = models[:, turn]
        new = input_tokens[rows, m] if turn == 0 else follow_tokens[:, turn - 1]
        sent = prefix + new
        cached = np.zeros(n)
        for column in np.unique(m):
            mask = m == column
            cached[mask] = seen.get(column, np.zeros(n))[mask]
        out = output_tokens[rows, m]
        total += ((sent - cached) * p_in[m] + cached * p_cached[m] + out * p_out[m]) / 1e6
        for column in np.unique(m):
            mask = m == column
            memory = seen.setdefault(column, np.zeros(n))
            memory[mask] = (sent + out)[mask]
        prefix = sent + out
    return total


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="zeroeval-2024", help="a packaged routing table")
    parser.add_argument("--cached-ratio", type=float, default=0.1, help="cached input price / input price")
    parser.add_argument("--mus", type=int, default=101, help="μ values in [0, 1] for the AIQ curve")
    parser.add_argument("--default-mu", type=float, default=None, help="μ for the switch shares (router default)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if not 0 <= args.cached_ratio <= 1:
        parser.error(f"--cached-ratio must be in [0, 1], got {args.cached_ratio}")
    started = time.perf_counter()
    table = load_routing_table(str(packaged_table_dir(args.data)), split="test")
    router = default_router(data=args.data, progress=False)
    if list(router.config.candidate_models) != list(table.models):
        raise SystemExit(f"the router's candidates differ from {args.data}'s models")
    n = len(table)
    rng = random.Random(args.seed)
    follow_text = [[rng.choice(FOLLOW_UPS) for _ in range(TURNS - 1)] for _ in range(n)]

    opening = router.predict(table.prompts)
    follow_predictions = router.predict(list(FOLLOW_UPS))
    follow_index = np.array([[FOLLOW_UPS.index(t) for t in row] for row in follow_text])
    follow_tokens = follow_predictions.input_tokens.numpy()[follow_index]

    scores = np.nan_to_num(table.scores.astype(np.float64))
    input_tokens = np.nan_to_num(table.input_tokens.astype(np.float64))
    output_tokens = np.nan_to_num(table.output_tokens.astype(np.float64))
    prices = router.config.prices
    p_in = np.array([prices[m]["input"] for m in table.models])
    p_out = np.array([prices[m]["output"] for m in table.models])
    pricings = {"no_cache": p_in, "cached": p_in * args.cached_ratio}

    mus = np.linspace(0, 1, args.mus)
    default_mu = router.config.default_mu if args.default_mu is None else args.default_mu
    mus = np.unique(np.append(mus, default_mu))
    quality_first = opening.quality.numpy()
    quality_follow = follow_predictions.quality.numpy()[follow_index]
    points = {(p, c): ([], []) for p in POLICIES for c in pricings}
    switch_share, at_default = {}, {}
    for mu in mus:
        first = router.decide(opening, mu=float(mu)).model_indices.numpy()
        per_follow_up = router.decide(follow_predictions, mu=float(mu)).model_indices.numpy()
        follow = per_follow_up[follow_index]
        for policy in POLICIES:
            models = simulate(policy, first, follow, quality_first, quality_follow)
            switched = (models[:, 1:] != models[:, :-1]).any(axis=1)
            quality = scores[np.arange(n)[:, None], models].mean(axis=1)
            for pricing, p_cached in pricings.items():
                cost = conversation_cost(models, input_tokens, output_tokens, follow_tokens, p_in, p_out, p_cached)
                points[(policy, pricing)][0].append(cost.mean())
                points[(policy, pricing)][1].append(quality.mean())
                if mu == default_mu:
                    at_default[f"{policy}/{pricing}"] = {"quality": float(quality.mean()),
                                                         "spend_per_1000": float(cost.mean() * 1000)}
            if mu == default_mu:
                switch_share[policy] = float(switched.mean())
            switch_share.setdefault(f"{policy}_mean_over_mu", []).append(float(switched.mean()))
    for policy in POLICIES:
        switch_share[f"{policy}_mean_over_mu"] = float(np.mean(switch_share[f"{policy}_mean_over_mu"]))
    results = {"data": args.data, "conversations": n, "turns": TURNS, "cached_ratio": args.cached_ratio,
               "default_mu": float(default_mu), "switch_share": switch_share, "at_default_mu": at_default, "aiq": {}}
    for pricing in pricings:
        max_cost = max(max(points[(p, pricing)][0]) for p in POLICIES)
        for policy in POLICIES:
            costs, qualities = points[(policy, pricing)]
            results["aiq"][f"{policy}/{pricing}"] = aiq(costs, qualities, max_cost)
    results["seconds"] = round(time.perf_counter() - started, 1)
    width = max(len(k) for k in results["aiq"])
    print(f"{n} conversations of {TURNS} turns on {args.data}'s test split; cached input at "
          f"{args.cached_ratio:g} × input price (assumed)", file=sys.stderr)
    print("switch share at μ = %.2f: " % default_mu
          + ", ".join(f"{p} {switch_share[p]:.1%}" for p in POLICIES), file=sys.stderr)
    for key, value in results["aiq"].items():
        spend = at_default[key]["spend_per_1000"]
        print(f"  {key:<{width}}  AIQ {value:.4f}   at default μ: quality {at_default[key]['quality']:.4f}, "
              f"${spend:.3f} per 1,000 conversations", file=sys.stderr)
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    sys.exit(main())
