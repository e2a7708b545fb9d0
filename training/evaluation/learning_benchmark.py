"""
Does `carrot serve --learn` make the router better? AIQ on a test split before and after feeding
the train split's labels for one candidate through the gateway's feedback path.

The set-up, chosen so that the figure is honest:
- The router is CARROT-KNN on the train split with ONE candidate's cells unobserved: it knows the
  candidate's name and price (as a gateway does when an upstream is added) but none of its results.
  k is chosen by the usual out-of-fold AIQ on the train split without that candidate; the test split
  is only used to score.
- "before": that router with the unlabelled candidate not allowed, since it knows nothing about it.
  `before_allowing_unlabelled` allows it too: a kNN router predicts quality 0 and output tokens 0
  for a candidate with no observed cell, so it is chosen only where cost outweighs everything (on
  RouterBench with GPT-4 as the candidate, never: both figures are the same).
- feedback: every train prompt with a label for the candidate is served by it and labelled, through
  the same objects the gateway uses: `OutcomeLog.record` → `OutcomeLog.feedback` →
  `OnlineLearner.on_feedback` → `CarrotRouter.remember`, from concurrent threads as a gateway's
  feedback requests arrive (labels that queue up are encoded together). This is
  counterfactual feedback (a live gateway only hears about the model it chose), which is what the
  issue asks to measure.
- "after": the grown router, every candidate allowed, saved by the learner and reloaded from its
  new folder (so the figure is that of the router `--learn` leaves on disk).
- "retrained": the same k and cost scale filled with the full train split, the ceiling that
  retraining from the same labels reaches; growing the memory online should match it.
All curves are scored together (one shared cost range for AIQ) on the test split's true scores and
costs, as `carrot evaluate` does.
"""

from __future__ import annotations

import json
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from carrot_hub.building import fit_knn
from carrot_hub.data import load_routing_table
from carrot_hub.data.routing_table import RoutingTable
from carrot_hub.modeling_carrot import CarrotRouter, PromptEncoding
from carrot_hub.serving.learning import OnlineLearner
from carrot_hub.serving.outcome_log_writer import OutcomeLog

from .curves import CostQualityCurve, ground_truth
from ..embeddings import embed_table
from .evaluate import count_input_tokens, summarize
from ..knn import DEFAULT_K_GRID, train_knn_router
from ..prepare import new_training_router

DEFAULT_DATA = Path(__file__).resolve().parent.parent / "carrot_hub" / "default_data" / "routerbench-0shot"


def best_train_candidate(train: RoutingTable) -> str:
    """The candidate with the highest mean train score (missing = wrong): the one most worth learning."""
    means = np.nan_to_num(train.scores, nan=0.0).mean(axis=0)
    return train.models[int(np.argmax(means))]


def without_labels(table: RoutingTable, model: str) -> RoutingTable:
    """A copy of `table` where every cell of `model` (score and tokens) is unobserved."""
    column = table.models.index(model)
    arrays = {name: getattr(table, name).copy() for name in ("scores", "input_tokens", "output_tokens")}
    for array in arrays.values():
        array[:, column] = np.nan
    return RoutingTable(table.prompts, table.prompt_ids, table.tasks, list(table.models), prices=table.prices,
                        split=table.split, metadata=dict(table.metadata), **arrays)


def routing_curve(name: str, router, encoding: PromptEncoding, truth, mu_grid, allowed=None) -> CostQualityCurve:
    """Decide for every μ (restricted to `allowed`) and score the choices with the test truth."""
    predictions = router.predict_encoded(encoding)
    to_truth = np.array([truth.column(m) for m in router.config.candidate_models])
    choices = np.stack(
        [to_truth[router.decide(predictions, mu=float(mu), allowed=allowed).model_indices.numpy()] for mu in mu_grid]
    )
    costs, qualities = truth.realised(choices)
    return CostQualityCurve(name, "router", "mu", np.asarray(mu_grid, float), costs, qualities, top=0)


def measure_learning_aiq(
    data=DEFAULT_DATA,
    candidate: str | None = None,
    cache_dir=None,
    mu_steps: int = 101,
    k_grid=DEFAULT_K_GRID,
    seed: int = 0,
    work_dir=None,
    feedback_threads: int = 16,
    progress: bool = False,
) -> dict:
    """
    AIQ on `data`'s test split before and after feeding `candidate`'s train labels as feedback
    (see the module docstring). `candidate` defaults to `best_train_candidate(train)`.

    Returns a JSON-ready dict: `candidate`, `k`, `labels_fed`, `aiq` (`before`, `after`, `retrained`,
    `before_allowing_unlabelled`, `zero_router`, `oracle`), `not_worse`, `after_reload_identical`,
    `feedback_seconds`, `memory_rows` (before/after) and `log_records`.
    """
    train = load_routing_table(data, split="train")
    test = load_routing_table(data, split="test")
    candidate = candidate or best_train_candidate(train)
    if candidate not in train.models:
        raise ValueError(f"{candidate!r} is not a model of {data}; its models are {', '.join(train.models)}.")
    others = [m for m in train.models if m != candidate]
    masked = without_labels(train, candidate)

    # k by out-of-fold AIQ on the train split without the candidate (the test split only scores).
    knowing_others, report = train_knn_router(masked.select_models(others), k_grid=k_grid, seed=seed,
                                              cache_dir=cache_dir, progress=progress)
    k, cost_scale = report["k"], knowing_others.config.cost_scale
    train_embeddings = embed_table(knowing_others, train, cache_dir=cache_dir, progress=progress)

    def knn_router(table):
        router = new_training_router(train, "knn", cost_scale=cost_scale, knn_k=k)
        return fit_knn(router, train_embeddings, table)

    router = knn_router(masked)
    retrained = knn_router(train)
    memory_before = router.config.knn_memory_size

    truth = ground_truth(test)
    test_encoding = PromptEncoding(
        embed_table(router, test, cache_dir=cache_dir, progress=progress),
        count_input_tokens(router, test.prompts),
        [False] * len(test),
    )
    mu_grid = np.linspace(0.0, 1.0, mu_steps)
    curves = [
        routing_curve("before", router, test_encoding, truth, mu_grid, allowed=others),
        routing_curve("before_allowing_unlabelled", router, test_encoding, truth, mu_grid),
    ]

    column = train.models.index(candidate)
    labelled = np.flatnonzero(~np.isnan(train.scores[:, column]))
    with tempfile.TemporaryDirectory(prefix="carrot-learning-bench-", dir=work_dir) as scratch:
        log = OutcomeLog(Path(scratch) / "log")
        learner = OnlineLearner(router, Path(scratch) / "grown", every=0)
        started = time.perf_counter()

        def serve_and_label(row: int) -> None:
            request_id = f"bench-{row}"
            n_in, n_out = train.input_tokens[row, column], train.output_tokens[row, column]
            log.record({
                "request_id": request_id, "prompt": train.prompts[row], "model": candidate, "status": "ok",
                "usage": {"prompt_tokens": None if np.isnan(n_in) else int(n_in),
                          "completion_tokens": None if np.isnan(n_out) else int(n_out)},
            })
            score = float(train.scores[row, column])
            learner.on_feedback(request_id, score, log.feedback(request_id, score))

        # Labels arrive concurrently, as POST /v1/feedback requests do in the gateway's thread pool.
        with ThreadPoolExecutor(max_workers=feedback_threads) as pool:
            list(pool.map(serve_and_label, labelled.tolist()))
        feedback_seconds = time.perf_counter() - started
        log.close()
        saved = learner.close()
        log_records = sum(1 for _ in (Path(scratch) / "log").glob("outcomes-*.jsonl") for _ in open(_))
        grown = CarrotRouter.from_pretrained(saved)
        after_live = routing_curve("after_live", router, test_encoding, truth, mu_grid)
        curves.append(routing_curve("after", grown, test_encoding, truth, mu_grid))
        memory_after = grown.config.knn_memory_size
    curves.append(routing_curve("retrained", retrained, test_encoding, truth, mu_grid))

    results = summarize(curves, truth)
    aiq = {name: results["routers"][name]["aiq"] for name in ("before", "after", "retrained", "before_allowing_unlabelled")}
    aiq["zero_router"] = results["zero_router"]["aiq"]
    aiq["oracle"] = results["oracle"]["aiq"]
    quality_mu0 = {name: results["routers"][name]["quality_mu0"] for name in ("before", "after", "retrained")}
    same = bool(np.array_equal(after_live.costs, curves[2].costs) and np.array_equal(after_live.qualities, curves[2].qualities))
    return {
        "data": str(data),
        "test_prompts": len(test),
        "candidate": candidate,
        "candidate_rule": "highest mean train score" if candidate == best_train_candidate(train) else "given",
        "k": k,
        "labels_fed": int(labelled.size),
        "aiq": aiq,
        "quality_mu0": quality_mu0,
        "aiq_gain": aiq["after"] - aiq["before"],
        "not_worse": aiq["after"] >= aiq["before"],
        "after_reload_identical": same,
        "feedback_seconds": feedback_seconds,
        "feedback_threads": feedback_threads,
        "learner_stats": dict(learner.stats),
        "labels_per_second": labelled.size / feedback_seconds if feedback_seconds else None,
        "memory_rows": {"before": memory_before, "after": memory_after},
        "log_records": log_records,
    }


def main(argv=None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="routing data with train and test splits")
    parser.add_argument("--candidate", help="the candidate whose labels are fed (default: best mean train score)")
    parser.add_argument("--cache-dir", help="embedding cache folder (shared: /work/cache/emb)")
    parser.add_argument("--mu-steps", type=int, default=101)
    parser.add_argument("--progress", action="store_true")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    result = measure_learning_aiq(args.data, args.candidate, cache_dir=args.cache_dir, mu_steps=args.mu_steps,
                                  progress=args.progress)
    print(json.dumps(result))
    return 0 if result["not_worse"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
