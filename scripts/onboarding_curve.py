"""Onboarding curve: how many answers of a new model `carrot collect` must gather before `carrot add-model`
routes as well as a router trained with all of that model's labels.

    python scripts/onboarding_curve.py [--sizes 25,50,100,200,400] [--models auto] [--cache-dir /work/cache/emb]

On the packaged ZeroEval table (21 models, 1,483 train and 636 test prompts), for three models in turn
(a strong, a middle and a cheap one, picked from the train split: the best mean score, the median
mean score, the lowest mean cost per prompt), it:

1. trains the kNN router on all train labels (the reference) and the kNN router without that model
   (same encoder, the reference's cost scale, k chosen out of fold as `carrot train` does);
2. picks N train prompts, either at random (one seeded permutation, so the sets are nested) or where
   the router without the model is least sure (the highest mean p(1 - p) of its predicted quality
   over the candidates it has: prompts the other models are uncertain on);
3. collects the model's answers on them with `carrot_hub.collect` (the engine of `carrot collect`)
   from the replay upstream, which answers from ZeroEval's recorded responses, scored with `number`
   (GSM8K) and `exact` (CRUXEval-O);
4. adds the model to the router without it with `add_candidate` (what `carrot add-model` runs), and
5. scores both routers on the test split over one μ sweep (shared cost range): AIQ, and the model's
   share of the decisions averaged over μ.

Prints a table per model, then one JSON line. Not a timed test: it takes minutes (embeddings are
cached with `--cache-dir`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from carrot_hub.collect import collect  # noqa: E402
from carrot_hub.data import load_routing_table, resolve_table_source  # noqa: E402
from carrot_hub.serving.fake_upstream import FakeUpstream, FakeUpstreamConfig  # noqa: E402
from carrot_hub.serving.local_server import LocalServer  # noqa: E402
from carrot_hub.serving.replay_record import ReplayRecord  # noqa: E402
from training.candidates import MIN_ROWS, add_candidate  # noqa: E402
from training.embeddings import embed_table  # noqa: E402
from training.evaluation.evaluate import router_curve, router_predictions, summarize  # noqa: E402
from training.knn import train_knn_router  # noqa: E402

SCORERS = ["gsm8k=number", "cruxeval=exact"]
SELECTIONS = ("random", "uncertain")


def shared_responses() -> Path:
    """`$CARROT_SHARED_DATA/zeroeval-2024/responses`, else the first `shared/data/...` beside or above the checkout."""
    if os.environ.get("CARROT_SHARED_DATA"):
        return Path(os.environ["CARROT_SHARED_DATA"]) / "zeroeval-2024" / "responses"
    for folder in (ROOT, *ROOT.parents):
        candidate = folder / "shared" / "data" / "zeroeval-2024" / "responses"
        if candidate.is_dir():
            return candidate
    raise SystemExit("ZeroEval's recorded responses were not found: pass --responses or set CARROT_SHARED_DATA.")


def pick_models(train) -> dict[str, str]:
    """Strong (best mean train score), middle (median mean score) and cheap (lowest mean cost) models."""
    quality = np.nanmean(train.scores, axis=0)
    cost = np.nanmean(train.cost(), axis=0)
    order = np.argsort(-quality)
    strong = train.models[int(order[0])]
    cheap = train.models[int(np.argmin(cost))]
    rest = [train.models[int(i)] for i in order if train.models[int(i)] not in (strong, cheap)]
    middle = rest[len(rest) // 2]
    return {"strong": strong, "middle": middle, "cheap": cheap}


def uncertainty(router, table, embeddings) -> np.ndarray:
    """Per prompt, the mean over the router's candidates of p(1 - p) of its predicted quality p: `(n,)`."""
    quality = router_predictions(router, table, embeddings=embeddings).quality.numpy()
    return (quality * (1 - quality)).mean(axis=1)


def write_prompts(path: Path, table, golden: dict[str, str], rows: np.ndarray) -> None:
    with path.open("w", encoding="utf-8") as out:
        for i in rows:
            key = table.prompt_ids[i]
            out.write(json.dumps({"key": key, "prompt": table.prompts[i], "task": table.tasks[i],
                                  "reference": golden[key]}, ensure_ascii=False) + "\n")


def decision_share(curve, truth, model: str) -> float:
    """The model's share of the router's decisions, averaged over the μ sweep."""
    return float((curve.choices == truth.column(model)).mean())


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="zeroeval-2024", help="packaged table name or SPROUT folder (default zeroeval-2024)")
    parser.add_argument("--responses", type=Path, help="recorded answers (default: shared/data/zeroeval-2024/responses)")
    parser.add_argument("--sizes", default="25,50,100,200,400", help="numbers of prompts to collect")
    parser.add_argument("--models", default="auto", help="comma-separated models, or auto (strong, middle, cheap)")
    parser.add_argument("--selections", default=",".join(SELECTIONS), help="random, uncertain or both")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache-dir", help="embedding cache folder")
    args = parser.parse_args(argv)
    sizes = [int(n) for n in args.sizes.split(",")]
    selections = [s for s in args.selections.split(",") if s]
    started = time.time()

    source = resolve_table_source(args.data, strict=False)
    train = load_routing_table(source, split="train", progress=False)
    test = load_routing_table(source, split="test", progress=False)
    golden = {}
    for path in sorted(Path(source).glob("data/*.parquet")):
        frame = pd.read_parquet(path, columns=["key", "golden_answer"])
        golden.update(zip(frame["key"], frame["golden_answer"].astype(str)))
    roles = pick_models(train) if args.models == "auto" else {m: m for m in args.models.split(",")}

    full, full_report = train_knn_router(train, cache_dir=args.cache_dir, progress=False)
    cost_scale = full.config.cost_scale
    train_embeddings = embed_table(full, train, cache_dir=args.cache_dir, progress=False)
    test_embeddings = embed_table(full, test, cache_dir=args.cache_dir, progress=False)
    full_curve, truth = router_curve(full, test, embeddings=test_embeddings, name="all train labels")
    row_of = {key: i for i, key in enumerate(train.prompt_ids)}
    record = ReplayRecord.from_files(source, args.responses or shared_responses())
    fake = FakeUpstream(FakeUpstreamConfig(replay=record))

    results: dict = {"data": str(args.data), "sizes": sizes, "selections": selections, "full_router_k": full_report["k"],
                     "models": {}}
    with LocalServer(fake.app) as server, tempfile.TemporaryDirectory(prefix="onboarding-") as work:
        work = Path(work)
        for role, model in roles.items():
            others = [m for m in train.models if m != model]
            without, report = train_knn_router(train.select_models(others), embeddings=train_embeddings,
                                               cost_scale=cost_scale, progress=False)
            unsure = uncertainty(without, train, train_embeddings)
            orders = {"random": np.random.default_rng(args.seed).permutation(len(train)),
                      "uncertain": np.argsort(-unsure, kind="stable")}
            upstreams = {model: {"base_url": server.base_url, "model": model}}
            curves, runs = [], []
            for selection in selections:
                for size in sizes:
                    rows = orders[selection][:size]
                    prompts = work / f"{model}-{selection}-{size}.jsonl"
                    write_prompts(prompts, train, golden, rows)
                    result = collect(prompts, upstreams, models=[model], out=work / f"{model}-{selection}-{size}",
                                     scorers=SCORERS, prices={model: train.prices[model]}, progress=False)
                    collected = load_routing_table(result.table, split="train", progress=False)
                    embeddings = train_embeddings[[row_of[key] for key in collected.prompt_ids]]
                    added = add_candidate(without, model, collected, train.prices[model]["input"],
                                          train.prices[model]["output"], min_rows=min(size, MIN_ROWS),
                                          embeddings=embeddings)
                    curve, _ = router_curve(added, test, embeddings=test_embeddings, name=f"{selection} N={size}")
                    curves.append(curve)
                    column = collected.models.index(model)
                    ours = collected.scores[:, column]
                    theirs = train.scores[[row_of[k] for k in collected.prompt_ids], train.models.index(model)]
                    scored = ~np.isnan(ours)
                    runs.append({"selection": selection, "n": size, "labels": int(scored.sum()),
                                 "label_agreement_with_zeroeval": round(float((ours[scored] == theirs[scored]).mean()), 4),
                                 "collected_mean_score": round(float(np.nanmean(ours)), 4),
                                 "spent": round(result.spent, 6), "curve": curve})
            summary = summarize([full_curve, *curves], truth)
            full_aiq = summary["routers"]["all train labels"]["aiq"]
            entry = {"role": role, "train_mean_score": round(float(np.nanmean(train.scores[:, train.models.index(model)])), 4),
                     "full_router_aiq": round(full_aiq, 5), "full_router_share": round(decision_share(full_curve, truth, model), 4),
                     "without_k": report["k"], "runs": []}
            for run in runs:
                curve = run.pop("curve")
                aiq = summary["routers"][curve.name]["aiq"]
                run.update({"aiq": round(aiq, 5), "aiq_minus_full": round(aiq - full_aiq, 5),
                            "share": round(decision_share(curve, truth, model), 4)})
                entry["runs"].append(run)
            results["models"][model] = entry
            print(f"\n== {role}: {model} (train mean score {entry['train_mean_score']}); router on all train labels: "
                  f"AIQ {full_aiq:.4f}, its share {entry['full_router_share']:.1%}")
            print(f"  {'selection':10s} {'N':>4s} {'labels':>6s} {'AIQ':>7s} {'vs full':>8s} {'share':>6s} {'agree':>6s}")
            for run in entry["runs"]:
                print(f"  {run['selection']:10s} {run['n']:4d} {run['labels']:6d} {run['aiq']:7.4f} "
                      f"{run['aiq_minus_full']:+8.4f} {run['share']:6.1%} {run['label_agreement_with_zeroeval']:6.1%}")

    at_200 = [run["aiq_minus_full"] for entry in results["models"].values() for run in entry["runs"] if run["n"] == 200]
    results["worst_gap_at_200"] = min(at_200) if at_200 else None
    results["within_0.002_at_200"] = bool(at_200) and all(gap >= -0.002 for gap in at_200)
    results["seconds"] = round(time.time() - started, 1)
    print(json.dumps(results))
    return results


if __name__ == "__main__":
    main()
