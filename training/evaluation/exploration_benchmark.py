"""
Does judged exploration (`carrot serve --learn --explore RATE --judge CANDIDATE`) teach the router?
A simulation with real answers: ZeroEval's 2024 table, every candidate and the judge replayed from
ZeroEval's recorded answers and 0/1 grades (`FakeUpstream` with `replay` and `replay_judge`).

The gateway is the real one (`carrot_hub.serving.app.Gateway`: routing batcher, upstream pool,
exploration queue and judge scorer, outcome log, `OnlineLearner` and `remember()`), driven in
process: clients and upstreams are reached through `httpx.ASGITransport` (nothing is sent on a
network). Per arm:

1. the start router: CARROT-KNN (`training.knn.train_knn_router`, what `carrot train --kind knn`
   runs: k by out-of-fold AIQ) on a seeded `start_share` of the train prompts (all their labels);
2. the other train prompts, in one seeded order, are sent as `model: "carrot"` (μ = the router's
   default) plain chat requests; an arm explores with RATE (`--explore RATE --judge JUDGE`, out of
   distribution at the default 4 × RATE) with one explored-candidate rule, or sends the chosen
   model's ZeroEval 0/1 as user feedback after every answer (`POST /v1/feedback`);
3. after every `every` requests (and at the start and end) the queue is drained (explorations
   judged and learned) and the router being served, the object `remember()` grows, routes the
   test prompts over a μ sweep. Each request waits for its exploration to be learned before the
   next is sent, so runs are deterministic (a gateway under light traffic).

All curves of one scenario are scored together (one shared cost range, as `carrot evaluate` does)
with the router trained on all train labels (the target) and the zero router. Spend is the
gateway's own metrics: `carrot_spend_dollars_total` (serving) and
`carrot_explore_spend_dollars_total` (explored answers and judge calls).
"""

from __future__ import annotations

import asyncio
import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import torch

from carrot_hub.data.routerbench import write_routerbench_responses
from carrot_hub.modeling_carrot import CarrotRouter
from carrot_hub.serving.app import Gateway, GatewaySettings
from carrot_hub.serving.exploration import DEFAULT_PICK_RULE, PICK_RULES, ExploreSettings, default_ood_rate
from carrot_hub.serving.fake_upstream import FakeUpstream, FakeUpstreamConfig
from carrot_hub.serving.learning import OnlineLearner
from carrot_hub.serving.outcome_log_writer import OutcomeLog
from carrot_hub.serving.upstreams import UpstreamPool, parse_upstreams

from ..embeddings import embed_table
from ..knn import train_knn_router
from .evaluate import router_curve, summarize

LOCAL = "http://127.0.0.1"
# Where each packaged table's recorded answers lie under shared/data, its default judge and new-task scenario.
SHARED_ANSWERS = {"zeroeval-2024": "zeroeval-2024/responses", "routerbench-0shot": "routerbench-0shot"}
DEFAULT_JUDGES = {"zeroeval-2024": "gpt-4o-2024-08-06", "routerbench-0shot": "gpt-4-1106-preview"}
DEFAULT_NEW_TASKS = {"zeroeval-2024": "gsm8k:cruxeval", "routerbench-0shot": "arc-challenge,winogrande:mbpp"}  # a label only: every call goes through an in-process ASGI transport


@dataclass(frozen=True)
class Arm:
    """One way of serving the stream: exploration RATE with a pick rule, or user feedback on the chosen model."""

    name: str
    rate: float = 0.0
    feedback: bool = False
    rule: str = DEFAULT_PICK_RULE
    max_share: float | None = None  # --explore-max-share: exploration's spend at most this share of serving's
    ood_rate: float | None = None  # --explore-ood-rate (None: its default, 4 x rate)


def default_arms(rules=("most-uncertain", "random", "most-expensive")) -> list[Arm]:
    arms = [Arm("rate=0"), Arm("rate=0.05", 0.05), Arm("rate=0.2", 0.2), Arm("user feedback", feedback=True),
            Arm("rate=0.2 share<=0.25", 0.2, max_share=0.25), Arm("rate=1 share<=0.25", 1.0, max_share=0.25)]
    return arms + [Arm(f"rate=0.2 {rule}", 0.2, rule=rule) for rule in rules]


def counter_total(counter, label: str | None = None) -> float:
    """The sum of a prometheus Counter's `_total` samples (only those with `label` as a label value when given)."""
    return float(sum(sample.value for metric in counter.collect() for sample in metric.samples
                     if sample.name.endswith("_total") and (label is None or label in sample.labels.values())))


def start_rows(n: int, share: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`(start, stream)`: a seeded `share` of `range(n)` (at least 1) and the rest, both in the seeded order."""
    order = np.random.default_rng(seed).permutation(n)
    cut = max(1, math.ceil(share * n))
    return order[:cut], order[cut:]


async def _drain(gateway: Gateway) -> None:
    """Wait until every queued exploration is judged and learned and every record is written."""
    if gateway.explorer is not None:
        await gateway.explorer.join()
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(gateway._log_writer, lambda: None)
    await loop.run_in_executor(gateway._learning, lambda: None)


async def serve_stream(router, record, arm: Arm, judge: str, prompts: list[str], truth: np.ndarray, models: list[str],
                       every: int, evaluate, work: Path, seed: int = 0, deadline: float = math.inf) -> dict:
    """
    Serve `prompts` through a gateway around `router` (grown in place by `--learn`) as `arm` says.
    `truth (n_prompts, n_models)`: the ZeroEval 0/1 a user would send. `evaluate(requests)` is called
    at every checkpoint, with the queue drained, and returns what to record of the router then.
    Returns `{"checkpoints": [...], "stopped_early": bool, "ood_share": float}`.
    """
    fake = FakeUpstream(FakeUpstreamConfig(replay=record, replay_judge=True))
    pool = UpstreamPool(parse_upstreams({m: {"base_url": f"{LOCAL}/v1", "model": m} for m in models}), environ={},
                        transport=httpx.ASGITransport(app=fake.app))
    learner = OnlineLearner(router, work / "grown", every=0, keep=1)
    explore = None if arm.feedback else ExploreSettings(rate=arm.rate, judge=judge, seed=seed, pick_rule=arm.rule,
                                                        max_share=arm.max_share, ood_rate=arm.ood_rate)
    gateway = Gateway(router, pool, GatewaySettings(route_window_s=0.0), outcome_log=OutcomeLog(work / "log"),
                      learner=learner, explore=explore)
    metrics, checkpoints, stopped_early = gateway.metrics, [], False

    def checkpoint(requests: int) -> None:
        explored_spend = counter_total(metrics.explore_spend, "explored")
        judge_spend = counter_total(metrics.explore_spend, "judge")
        serving = counter_total(metrics.spend)
        checkpoints.append({
            "requests": requests, "labels": learner.stats["learned"],
            "explored": gateway.explorer.stats["queued"] if gateway.explorer else 0,
            "serving_spend": serving, "explored_spend": explored_spend, "judge_spend": judge_spend,
            "explore_share": (explored_spend + judge_spend) / serving if serving else 0.0,
            **evaluate(requests),
        })

    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=gateway.app), base_url=f"{LOCAL}/v1",
                                     timeout=60) as client:
            checkpoint(0)
            for index, prompt in enumerate(prompts):
                response = await client.post("/chat/completions", json={
                    "model": "carrot", "messages": [{"role": "user", "content": prompt}]})
                if response.status_code != 200:
                    raise RuntimeError(f"the gateway answered {response.status_code}: {response.text[:300]}")
                score = float(truth[index, models.index(response.headers["x-carrot-model"])]) if arm.feedback else math.nan
                if not math.isnan(score):  # a cell the table has no score of (RouterBench's gaps) gets no feedback
                    answer = await client.post("/feedback", json={
                        "request_id": response.headers["x-carrot-request-id"], "score": score})
                    if answer.status_code != 200:
                        raise RuntimeError(f"feedback was refused: {answer.text[:300]}")
                await _drain(gateway)
                done = index + 1
                if done % every == 0 or done == len(prompts):
                    checkpoint(done)
                if time.monotonic() > deadline:
                    stopped_early = done < len(prompts)
                    if done % every:
                        checkpoint(done)
                    break
        ood = {key: counter_total(metrics.routed_distribution, key) for key in ("true", "false", "unknown")}
    finally:
        await gateway.aclose()
    routed = sum(ood.values())
    return {"checkpoints": checkpoints, "stopped_early": stopped_early, "learner": dict(learner.stats),
            "ood_share": ood["false"] / routed if routed else None}


def run_scenario(name: str, train, test, record, arms: list[Arm], judge: str, every: int, start_share: float | None,
                 seed: int, cache_dir=None, start_table=None, stream_table=None, mu_steps: int = 101,
                 deadline: float = math.inf, limit: int | None = None, encoder_kind: str = "transformer",
                 progress: bool = True) -> dict:
    """
    One scenario: the start router (on `start_share` of `train`, or on `start_table` with `stream_table`
    as traffic), the target router on all of `train`, every arm's stream, all scored on `test`.
    """
    began = time.perf_counter()
    if start_table is None:
        start, stream = start_rows(len(train), start_share, seed)
        start_table, stream_table = train.subset(np.sort(start)), train.subset(stream)
    if limit is not None and limit < len(stream_table):
        stream_table = stream_table.subset(np.arange(limit))
    options = {"encoder_kind": encoder_kind} if encoder_kind != "transformer" else {}
    full, full_report = train_knn_router(train, seed=seed, cache_dir=cache_dir, progress=False, **options)
    start_router, start_report = train_knn_router(start_table, seed=seed, cache_dir=cache_dir, progress=False, **options)
    test_embeddings = embed_table(full, test, cache_dir=cache_dir, progress=False)
    flags = start_router.route(list(test.prompts)).in_distribution
    start_ood_share = sum(flag is False for flag in flags) / len(flags)  # what the start router makes of the test prompts
    mu_grid = np.linspace(0, 1, mu_steps)
    curves, truth_holder = [], {}

    def curve_of(router, label):
        curve, truth = router_curve(router, test, mu_grid=mu_grid, embeddings=test_embeddings, name=label)
        curve.choices = None  # one shared summary below; no per-curve bootstrap
        curves.append(curve)
        truth_holder["truth"] = truth
        return curve

    curve_of(full, "all train labels")
    curve_of(start_router, "start")
    arms_out = {}
    with tempfile.TemporaryDirectory(prefix="carrot-explore-bench-") as scratch:
        start_router.save_pretrained(Path(scratch) / "start")
        for arm in arms:
            router = CarrotRouter.from_pretrained(Path(scratch) / "start")  # each arm grows its own copy
            arm_began = time.perf_counter()

            def evaluate(requests, router=router, arm=arm):
                return {"curve": curve_of(router, f"{arm.name} @{requests}").name}

            result = asyncio.run(serve_stream(router, record, arm, judge, list(stream_table.prompts),
                                              stream_table.scores, list(train.models), every, evaluate,
                                              Path(scratch) / arm.name.replace(" ", "_"), seed=seed, deadline=deadline))
            result["seconds"] = round(time.perf_counter() - arm_began, 1)
            arms_out[arm.name] = {"rate": arm.rate, "feedback": arm.feedback, "rule": None if arm.feedback else arm.rule,
                                  "max_share": arm.max_share,
                                  **result}
            if progress:
                last = result["checkpoints"][-1]
                print(f"[{name}] {arm.name}: {last['requests']} requests, {last['labels']} labels, "
                      f"explore share {last['explore_share']:.1%}, {result['seconds']} s", flush=True)
    summary = summarize(curves, truth_holder["truth"])
    aiq = {curve: round(entry["aiq"], 5) for curve, entry in summary["routers"].items()}
    for arm in arms_out.values():
        for point in arm["checkpoints"]:
            point["aiq"] = aiq[point.pop("curve")]
    return {
        "scenario": name, "n_train": len(train), "n_start": len(start_table), "n_stream": len(stream_table),
        "n_test": len(test), "k_start": start_report["k"], "k_full": full_report["k"],
        "encoder": f"{full.config.encoder_kind} ({full.config.encoder_name})",
        "aiq_all_train_labels": aiq["all train labels"], "aiq_start": aiq["start"],
        "aiq_zero_router": round(summary["zero_router"]["aiq"], 5), "start_test_ood_share": round(start_ood_share, 4),
        "arms": arms_out,
        "seconds": round(time.perf_counter() - began, 1),
    }


def interpolate_at(points: list[tuple[float, float]], x: float) -> float | None:
    """The piecewise-linear value at `x` of `(x, y)` points sorted by x; None outside their range."""
    xs, ys = zip(*points)
    if x < xs[0] or x > xs[-1]:
        return None
    return float(np.interp(x, xs, ys))


def judge_targets(scenario: dict, rate_arm: str = "rate=0.2", feedback_arm: str = "user feedback") -> dict:
    """The issue's targets read off one scenario's curves."""
    target = scenario["aiq_all_train_labels"]
    arm = scenario["arms"][rate_arm]["checkpoints"]
    reached = next((p for p in arm if p["aiq"] >= target), None)
    final = arm[-1]
    out = {
        "target_aiq": target,
        "rate_0.2_final_aiq": final["aiq"],
        "rate_0.2_best_aiq": max(p["aiq"] for p in arm),
        "reached_at_requests": reached["requests"] if reached else None,
        "explore_share_when_reached": round(reached["explore_share"], 4) if reached else None,
        "reached_within_25pct": bool(reached and reached["explore_share"] <= 0.25),
        "rate_0.2_final_explore_share": round(final["explore_share"], 4),
    }
    feedback = [(p["labels"], p["aiq"]) for p in scenario["arms"][feedback_arm]["checkpoints"]]
    at = interpolate_at(feedback, final["labels"])
    out["equal_labels"] = {
        "labels": final["labels"], "exploration_aiq": final["aiq"],
        "user_feedback_aiq": None if at is None else round(at, 5),
        "exploration_minus_feedback": None if at is None else round(final["aiq"] - at, 5),
    }
    return out


def rule_summary(scenarios: list[dict], rate: float = 0.2) -> dict:
    """
    Per pick rule at `rate`, over scenarios: AIQ gain over the start router at the end of the stream,
    and per 100 labels and per US$ of exploration; the mean gain over the learning curve's checkpoints too.
    """
    rules: dict[str, list] = {}
    for scenario in scenarios:
        for arm in scenario["arms"].values():
            if arm["feedback"] or arm["rate"] != rate or arm.get("max_share") is not None:
                continue
            points = arm["checkpoints"]
            final = points[-1]
            gain = final["aiq"] - scenario["aiq_start"]
            spend = final["explored_spend"] + final["judge_spend"]
            rules.setdefault(arm["rule"], []).append({
                "scenario": scenario["scenario"], "final_gain": gain,
                "mean_gain": float(np.mean([p["aiq"] - scenario["aiq_start"] for p in points[1:]])),
                "gain_per_100_labels": 100 * gain / final["labels"] if final["labels"] else None,
                "gain_per_dollar": gain / spend if spend else None, "labels": final["labels"],
                "explore_share": final["explore_share"]})
    out = {}
    for rule, rows in rules.items():
        out[rule] = {key: round(float(np.mean([r[key] for r in rows if r[key] is not None])), 5)
                     for key in ("final_gain", "mean_gain", "gain_per_100_labels", "gain_per_dollar", "labels",
                                 "explore_share")}
        out[rule]["per_scenario"] = {r["scenario"]: round(r["final_gain"], 5) for r in rows}
    return out


def main(argv=None) -> int:
    import argparse
    import json

    from carrot_hub.data import load_routing_table, resolve_table_source
    from carrot_hub.serving.replay_record import ReplayRecord

    from .resplit import pooled_table, resplit_rows

    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--data", default="zeroeval-2024", help="packaged table: zeroeval-2024 (default) or "
                        "routerbench-0shot, or a SPROUT folder with --responses")
    parser.add_argument("--responses", type=Path, help="the recorded answers with their scores (default: "
                        "$CARROT_SHARED_DATA/zeroeval-2024/responses, or for routerbench-0shot its CSVs' answers, "
                        "$CARROT_SHARED_DATA/routerbench-0shot; else shared/data/... above the checkout)")
    parser.add_argument("--judge", help="the judging candidate (its price is what the judge costs; default "
                        "gpt-4o-2024-08-06 on zeroeval-2024, gpt-4-1106-preview on routerbench-0shot)")
    parser.add_argument("--start-share", type=float, default=0.1, help="share of the train prompts the start router knows")
    parser.add_argument("--every", type=int, default=200, help="requests between two test evaluations")
    parser.add_argument("--rules", default="most-uncertain,random,most-expensive",
                        help="other explored-candidate rules run at RATE 0.2 beside closest-cheaper ('' for none)")
    parser.add_argument("--arms", help="comma-separated arm names to run (default: all; e.g. 'rate=0.2,user feedback')")
    parser.add_argument("--resplits", default="", help="comma-separated re-split seeds to run too (training.evaluation.resplit)")
    parser.add_argument("--new-task", nargs="?", const="", metavar="KNOWN:NEW",
                        help="also: a router trained on the KNOWN tasks only (comma-separated), the NEW task's train "
                             "prompts as traffic (default gsm8k:cruxeval on zeroeval-2024, "
                             "arc-challenge,winogrande:mbpp on routerbench-0shot)")
    parser.add_argument("--new-task-every", type=int, default=100)
    parser.add_argument("--new-task-rates", default="0.2", help="exploration rates of the new-task scenario")
    parser.add_argument("--new-task-ood-only", action="store_true",
                        help="also serve the new task exploring only prompts out of the trained distribution "
                             "(RATE 0, --explore-ood-rate at the first rate's default)")
    parser.add_argument("--new-task-rules", default="", help="other explored-candidate rules run in the new-task "
                        "scenario at its first rate (comma-separated, e.g. most-uncertain,random)")
    parser.add_argument("--skip-own-split", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache-dir", help="embedding cache folder (shared: /work/cache/emb)")
    parser.add_argument("--max-minutes", type=float, default=240, help="stop streaming (and report) after this long")
    parser.add_argument("--encoder", choices=("transformer", "static"), default="transformer",
                        help="the routers' encoder: all-MiniLM-L6-v2 (carrot train's default) or the static table "
                             "distilled from it (several times faster on a CPU)")
    parser.add_argument("--limit", type=int, help="stream at most this many requests per arm (a quick check)")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    deadline = time.monotonic() + args.max_minutes * 60
    started = time.perf_counter()

    source = resolve_table_source(args.data, strict=False)
    table_name = Path(str(source)).name
    responses = args.responses or _shared_responses(table_name)
    if responses.is_dir() and sorted(responses.glob("*_train.csv")):  # RouterBench's CSVs: answers in long form first
        with tempfile.TemporaryDirectory(prefix="carrot-routerbench-answers-") as scratch:
            write_routerbench_responses(responses, Path(scratch) / "responses.parquet")
            record = ReplayRecord.from_files(source, Path(scratch) / "responses.parquet")
    else:
        record = ReplayRecord.from_files(source, responses)
    train = load_routing_table(source, split="train", progress=False)
    test = load_routing_table(source, split="test", progress=False)
    args.judge = args.judge or DEFAULT_JUDGES.get(table_name, "gpt-4o-2024-08-06")
    if args.judge not in train.models:
        raise SystemExit(f"--judge must be a candidate of {args.data}: one of {', '.join(train.models)}.")
    unknown_rules = [r for r in (*args.rules.split(","), *args.new_task_rules.split(",")) if r and r not in PICK_RULES]
    if unknown_rules:
        raise SystemExit(f"--rules/--new-task-rules: unknown {unknown_rules}; the rules are {', '.join(PICK_RULES)}.")
    arms = default_arms([r for r in args.rules.split(",") if r])
    if args.arms:
        wanted = [name.strip() for name in args.arms.split(",")]
        unknown = [name for name in wanted if name not in {a.name for a in arms}]
        if unknown:
            raise SystemExit(f"--arms: unknown {unknown}; the arms are {', '.join(a.name for a in arms)}.")
        arms = [a for a in arms if a.name in wanted]
    results = {"data": str(args.data), "encoder": args.encoder, "judge": args.judge, "start_share": args.start_share, "every": args.every,
               "arms": [a.name for a in arms], "scenarios": {}}

    def run(name, tr, te, arm_list, **kw):
        results["scenarios"][name] = run_scenario(name, tr, te, record, arm_list, args.judge, kw.pop("every", args.every),
                                                  kw.pop("start_share", args.start_share), args.seed,
                                                  cache_dir=args.cache_dir, deadline=deadline, limit=args.limit,
                                                  encoder_kind=args.encoder, **kw)

    if not args.skip_own_split:
        run("own split", train, test, arms)
    if args.resplits:
        _, _, pooled, _ = pooled_table(source)
        fraction = len(test) / (len(train) + len(test))
        for split_seed in [int(s) for s in args.resplits.split(",")]:
            train_rows, test_rows = resplit_rows(pooled.tasks, fraction, split_seed)
            run(f"resplit {split_seed}", pooled.subset(train_rows), pooled.subset(test_rows), arms)
    for name, scenario in results["scenarios"].items():
        if {"rate=0.2", "user feedback"} <= set(scenario["arms"]):
            scenario["targets"] = judge_targets(scenario)
    results["rules"] = rule_summary(list(results["scenarios"].values()))
    resplit_scenarios = [s for n, s in results["scenarios"].items() if n.startswith("resplit")]
    if resplit_scenarios:
        results["rules_over_resplits"] = rule_summary(resplit_scenarios)

    if args.new_task is not None:
        known, new = parse_new_task(args.new_task or DEFAULT_NEW_TASKS.get(table_name, ""), train.tasks)
        train_tasks, test_tasks = np.array(train.tasks), np.array(test.tasks)
        known_train = train.subset(np.flatnonzero(np.isin(train_tasks, known)))
        new_train = train.subset(np.flatnonzero(train_tasks == new))
        new_test = test.subset(np.flatnonzero(test_tasks == new))
        order = np.random.default_rng(args.seed).permutation(len(new_train))
        rates = [float(r) for r in args.new_task_rates.split(",")]
        new_arms = [Arm(f"rate={r:g}", r) for r in rates] + [Arm("user feedback", feedback=True)]
        new_arms += [Arm(f"rate={rates[0]:g} {rule}", rates[0], rule=rule) for rule in args.new_task_rules.split(",") if rule]
        if args.new_task_ood_only:  # the out-of-distribution prompts at RATE's OOD rate, nothing in distribution
            ood = default_ood_rate(rates[0])
            new_arms.append(Arm(f"rate=0 ood={ood:g}", 0.0, ood_rate=ood))
        scenario = run_scenario("new task", new_train, new_test, record, new_arms, args.judge, args.new_task_every,
                                None, args.seed, cache_dir=args.cache_dir, start_table=known_train,
                                stream_table=new_train.subset(order), deadline=deadline, limit=args.limit,
                                encoder_kind=args.encoder)
        scenario["known_tasks"], scenario["new_task"] = known, new
        # "all train labels" here is the router on the new task's own train labels: what the stream could teach.
        zero = scenario["aiq_zero_router"]
        for arm in scenario["arms"].values():
            above = next((p["requests"] for p in arm["checkpoints"] if p["aiq"] > zero), None)
            arm["first_above_zero_router_at"] = above
        results["scenarios"]["new task"] = scenario

    results["seconds"] = round(time.perf_counter() - started, 1)
    text = json.dumps(results)
    if args.out:
        args.out.write_text(text + "\n", encoding="utf-8")
    print(text)
    return 0


def parse_new_task(text: str, tasks) -> tuple[list[str], str]:
    """`"a,b:c"` → `(["a", "b"], "c")`, each a task of `tasks`; SystemExit saying what is wrong otherwise."""
    known_text, _, new = text.partition(":")
    known = [t.strip() for t in known_text.split(",") if t.strip()]
    present = sorted(set(tasks))
    if not known or not new.strip():
        raise SystemExit(f"--new-task: give KNOWN:NEW, e.g. {present[0]}:{present[-1]} (the tasks are {', '.join(present)}).")
    new = new.strip()
    unknown = [t for t in (*known, new) if t not in present]
    if unknown or new in known:
        raise SystemExit(f"--new-task: {unknown or new!r} is not a task apart from the known ones; "
                         f"the tasks are {', '.join(present)}.")
    return known, new


def _shared_responses(table_name: str) -> Path:
    import os

    inside = SHARED_ANSWERS.get(table_name)
    if inside is None:
        raise SystemExit(f"No recorded answers are known for {table_name}: pass --responses.")
    if os.environ.get("CARROT_SHARED_DATA"):
        return Path(os.environ["CARROT_SHARED_DATA"]) / inside
    root = Path(__file__).resolve().parents[2]
    for folder in (root, *root.parents):
        candidate = folder / "shared" / "data" / inside
        if candidate.is_dir():
            return candidate
    raise SystemExit(f"The recorded answers of {table_name} were not found: pass --responses or set CARROT_SHARED_DATA.")


if __name__ == "__main__":
    raise SystemExit(main())
