"""
How much can labels of served traffic teach a kNN router through `remember()`? The ceiling of
`carrot serve --learn` (with `--explore` or user feedback), measured without the gateway.

Per scenario (a table's own split or a re-split): the start router is CARROT-KNN on a seeded 10% of
the train prompts (as `training.evaluation.exploration_benchmark` starts), the other train prompts
are the traffic, and each pattern of labels is given to a copy of the start router with one
`remember()` call, then scored on the test split with the all-train-labels router (the target) and
the start router, all curves on one shared cost range:

- `every model`: every candidate's recorded label of every traffic prompt. No exploration rate can
  give more; what this misses of the target is what `remember()` alone cannot reach (the start
  router's k and reliability layers were fitted on 10% of the prompts).
- `chosen`: the label of the candidate the start router chooses at μ = 0.5, for every prompt (a
  client that scores every answer).
- `explored 20%` / `explored 100%`: on a seeded 20% (or all) of the prompts, the chosen candidate's
  label and the label of the candidate the gateway would explore (`pick_explored`: the cheaper
  candidates' closest in predicted quality). RATE 0.2's labels, in one batch.
- `two random 20%`: on the same 20%, the labels of two candidates drawn at random (as many labels as
  `explored 20%`, with no choice in which).
- `explored 50%`: exploration's pairs on a seeded half of the prompts: as many labels as `chosen`,
  so `explored 50%` − `chosen` (paired by scenario in `--markdown`) is exploration against user
  feedback at equal labels.

The choices are the start router's for every prompt (one batch, not a stream that learns as it goes).
Last line: JSON; `--markdown` prints the table of mean ± SE over the scenarios.

`--label-curve 0.15,0.2,0.3,0.5`: the learning curve the patterns sit on. For each share, a router
retrained (`train_knn_router`, k and λ chosen out of fold) on that share of the train prompts, every
candidate labelled: the start prompts first, then the traffic in its seeded order. It says how many
labels the all-train AIQ takes when every label is as informative as a random one, against the
labels RATE 0.2 buys (`explored 20%`).

    python -m training.evaluation.label_ceiling --data routerbench-0shot --resplits 0,1,2,3,4 --cache-dir /work/cache/emb
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from carrot_hub.modeling_carrot import CarrotRouter
from carrot_hub.serving.batching import CandidateEstimate
from carrot_hub.serving.exploration import pick_explored

from ..embeddings import embed_table
from ..ablation import mean_and_error
from ..knn import train_knn_router
from ..knn_refit import refit_knn
from .evaluate import router_curve, summarize
from .exploration_benchmark import start_rows

PATTERNS = ("every model", "chosen", "explored 20%", "explored 50%", "explored 100%", "two random 20%")
EXPLORED_SHARE = 0.2


def label_patterns(start_router, stream, seed: int, mu: float = 0.5) -> dict[str, list[tuple[int, int]]]:
    """Each pattern of `PATTERNS` as `(row of stream, model column)` cells with a recorded score."""
    n, n_models = stream.scores.shape
    decision = start_router.route(list(stream.prompts), mu=mu)
    names = list(decision.candidate_models)
    column = [list(stream.models).index(name) for name in names]  # router order → table order
    chosen = [column[i] for i in decision.model_indices.tolist()]
    explored = []
    for row in range(n):
        ranked = [CandidateEstimate(name, float(decision.quality[row, j]), float(decision.output_tokens[row, j]),
                                    float(decision.cost[row, j])) for j, name in enumerate(names)]
        pick = pick_explored(ranked, decision.models[row])
        explored.append(None if pick is None else list(stream.models).index(pick))
    rng = np.random.default_rng(seed)
    sampled = rng.random(n) < EXPLORED_SHARE
    patterns = {
        "every model": [(i, j) for i in range(n) for j in range(n_models)],
        "chosen": [(i, chosen[i]) for i in range(n)],
        "explored 20%": [(i, j) for i in np.flatnonzero(sampled) for j in (chosen[i], explored[i]) if j is not None],
        "explored 100%": [(i, j) for i in range(n) for j in (chosen[i], explored[i]) if j is not None],
        "two random 20%": [(i, int(j)) for i in np.flatnonzero(sampled) for j in rng.choice(n_models, 2, replace=False)],
    }
    # Half the prompts, two labels each: as many labels as `chosen` (its own draw: the others' are unchanged).
    half = np.random.default_rng(seed + 1).random(n) < 0.5
    patterns["explored 50%"] = [(i, j) for i in np.flatnonzero(half) for j in (chosen[i], explored[i]) if j is not None]
    patterns = {name: patterns[name] for name in PATTERNS}
    return {name: [(int(i), int(j)) for i, j in cells if not np.isnan(stream.scores[i, j])] for name, cells in patterns.items()}


def remember_cells(router, stream, cells) -> None:
    """Give `router` the recorded score and output tokens of every `(row, column)` cell of `stream`, in one call."""
    tokens = [float(stream.output_tokens[i, j]) for i, j in cells]
    router.remember([stream.prompts[i] for i, _ in cells], [stream.models[j] for _, j in cells],
                    [float(stream.scores[i, j]) for i, j in cells],
                    [None if np.isnan(t) else t for t in tokens])


def run_scenario(name: str, train, test, seed: int = 0, start_share: float = 0.1, cache_dir=None,
                 encoder_kind: str = "static", mu_steps: int = 101, refit: bool = False,
                 curve_shares: tuple[float, ...] = ()) -> dict:
    """One scenario's AIQs: the target, the start router and the start router grown by each pattern."""
    began = time.perf_counter()
    start, stream_rows = start_rows(len(train), start_share, seed)
    start_table, stream = train.subset(np.sort(start)), train.subset(stream_rows)
    options = {"encoder_kind": encoder_kind} if encoder_kind != "transformer" else {}
    full, _ = train_knn_router(train, seed=seed, cache_dir=cache_dir, progress=False, **options)
    start_router, start_report = train_knn_router(start_table, seed=seed, cache_dir=cache_dir, progress=False, **options)
    test_embeddings = embed_table(full, test, cache_dir=cache_dir, progress=False)
    mu_grid = np.linspace(0, 1, mu_steps)
    curves, truth = [], None

    def score(router, label):
        nonlocal truth
        curve, truth = router_curve(router, test, mu_grid=mu_grid, embeddings=test_embeddings, name=label)
        curve.choices = None
        curves.append(curve)

    score(full, "all train labels")
    score(start_router, "start")
    label_curve = {}
    for share in curve_shares:  # nested: the start prompts, then the traffic in its seeded order
        rows = np.concatenate([start, stream_rows])[:max(len(start), math.ceil(share * len(train)))]
        subset = train.subset(np.sort(rows))
        retrained, _ = train_knn_router(subset, seed=seed, cache_dir=cache_dir, progress=False, **options)
        score(retrained, f"curve {share:g}")
        label_curve[f"{share:g}"] = {"prompts": len(subset), "labels": int(np.isfinite(subset.scores).sum())}
    patterns = label_patterns(start_router, stream, seed)
    refits = {}
    with tempfile.TemporaryDirectory(prefix="carrot-label-ceiling-") as scratch:
        start_router.save_pretrained(Path(scratch) / "start")
        for pattern, cells in patterns.items():
            grown = CarrotRouter.from_pretrained(Path(scratch) / "start")
            remember_cells(grown, stream, cells)
            score(grown, pattern)
            if refit:
                refits[pattern] = {key: value for key, value in refit_knn(grown, seed=seed).items() if key != "aiq"}
                score(grown, f"{pattern} + refit")
    summary = summarize(curves, truth)
    aiq = {label: round(entry["aiq"], 5) for label, entry in summary["routers"].items()}
    for share, entry in label_curve.items():
        entry["aiq"] = aiq.pop(f"curve {share}")
    return {"scenario": name, "n_start": len(start_table), "n_stream": len(stream), "n_test": len(test),
            "k_start": start_report["k"], "prior_shrink_start": start_router.config.prior_shrink,
            "aiq_all_train_labels": aiq.pop("all train labels"), "aiq_start": aiq.pop("start"),
            "aiq_zero_router": round(summary["zero_router"]["aiq"], 5), "aiq": aiq,
            "labels": {pattern: len(cells) for pattern, cells in patterns.items()}, "refits": refits,
            "start_labels": int(np.isfinite(start_table.scores).sum()), "label_curve": label_curve,
            "seconds": round(time.perf_counter() - began, 1)}


def markdown(scenarios: list[dict]) -> str:
    """Mean ± SE over the scenarios of each pattern's AIQ minus the start router's and minus the target's."""
    def mean_se(differences) -> str:
        summary = mean_and_error(differences)
        return f"{summary['mean']:+.4f} ± {summary['standard_error']:.4f}"

    lines = ["| labels | per scenario (mean) | AIQ − start | AIQ − all train labels |", "|---|---|---|---|"]
    for pattern in [p for name in PATTERNS for p in (name, f"{name} + refit") if p in scenarios[0]["aiq"]]:
        labels = np.mean([s["labels"][pattern.removesuffix(" + refit")] for s in scenarios])
        lines.append(f"| {pattern} | {labels:,.0f} | {mean_se([s['aiq'][pattern] - s['aiq_start'] for s in scenarios])} "
                     f"| {mean_se([s['aiq'][pattern] - s['aiq_all_train_labels'] for s in scenarios])} |")
    for share in scenarios[0].get("label_curve", {}):
        entries = [s["label_curve"][share] for s in scenarios]
        lines.append(f"| retrained on {float(share):.0%} of train, every label "
                     f"| {np.mean([e['labels'] for e in entries]):,.0f} "
                     f"| {mean_se([e['aiq'] - s['aiq_start'] for e, s in zip(entries, scenarios)])} "
                     f"| {mean_se([e['aiq'] - s['aiq_all_train_labels'] for e, s in zip(entries, scenarios)])} |")
    if "explored 50%" in scenarios[0]["aiq"]:
        lines.append(f"\nExplored 50% − chosen (equal labels), paired: "
                     f"{mean_se([s['aiq']['explored 50%'] - s['aiq']['chosen'] for s in scenarios])}.")
    gap = mean_se([s["aiq_all_train_labels"] - s["aiq_start"] for s in scenarios])
    lines.append(f"\nAll train labels − start: {gap} over {len(scenarios)} scenarios.")
    return "\n".join(lines)


def main(argv=None) -> int:
    from carrot_hub.data import load_routing_table, resolve_table_source

    from .resplit import pooled_table, resplit_rows

    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--data", default="zeroeval-2024", help="packaged table name or SPROUT folder")
    parser.add_argument("--resplits", default="", help="comma-separated re-split seeds (training.evaluation.resplit)")
    parser.add_argument("--skip-own-split", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--encoder", choices=("transformer", "static"), default="static")
    parser.add_argument("--cache-dir", help="embedding cache folder")
    parser.add_argument("--markdown", action="store_true", help="also print the mean ± SE table")
    parser.add_argument("--refit", action="store_true", help="also score each grown router after refit_knn "
                        "(k and λ re-chosen out of fold on its grown memory, as --learn does)")
    parser.add_argument("--label-curve", default="", metavar="SHARES",
                        help="comma-separated shares of the train prompts to retrain on, every label (e.g. 0.15,0.2,0.5)")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    try:
        curve_shares = tuple(float(share) for share in args.label_curve.split(",") if share.strip())
    except ValueError:
        parser.error(f"--label-curve takes comma-separated shares in (0, 1], got {args.label_curve!r}")
    if not all(0 < share <= 1 for share in curve_shares):
        parser.error(f"--label-curve takes comma-separated shares in (0, 1], got {args.label_curve!r}")
    source = resolve_table_source(args.data, strict=False)
    scenarios = []
    if not args.skip_own_split:
        train = load_routing_table(source, split="train", progress=False)
        test = load_routing_table(source, split="test", progress=False)
        scenarios.append(run_scenario("own split", train, test, seed=args.seed, cache_dir=args.cache_dir,
                                      encoder_kind=args.encoder, refit=args.refit,
                                      curve_shares=curve_shares))
    if args.resplits:
        own_train, own_test, pooled, _ = pooled_table(source)
        fraction = len(own_test) / (len(own_train) + len(own_test))  # as the exploration benchmark re-splits
        for split_seed in [int(s) for s in args.resplits.split(",")]:
            train_rows, test_rows = resplit_rows(pooled.tasks, fraction, split_seed)
            scenarios.append(run_scenario(f"resplit {split_seed}", pooled.subset(train_rows), pooled.subset(test_rows),
                                          seed=args.seed, cache_dir=args.cache_dir, encoder_kind=args.encoder, refit=args.refit,
                                      curve_shares=curve_shares))
    if not scenarios:
        raise SystemExit("Nothing to run: give --resplits or leave out --skip-own-split.")
    result = {"data": str(args.data), "encoder": args.encoder, "scenarios": scenarios}
    if args.markdown:
        print(markdown([s for s in scenarios if s["scenario"].startswith("resplit")] or scenarios))
    text = json.dumps(result)
    if args.out:
        args.out.write_text(text + "\n", encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
