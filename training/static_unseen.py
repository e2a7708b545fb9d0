"""
The static encoder on tasks it has not seen: leave-one-task-out AIQ of kNN routers on MiniLM's
embeddings and on static token tables' (the shipped one and the candidates to replace it).

    nice -n 10 python -m training.static_unseen --cache-dir /work/cache/emb --log static_unseen.jsonl --out static_unseen.json

For each packaged table and each of its tasks, a kNN router is trained as `carrot train --kind knn`
trains it (k by 5-fold out-of-fold AIQ, today's default reliability layers) on the table's other
tasks, and scored on the held-out task: AIQ − that task's zero router. MiniLM's router cuts prompts
as the table's default router does; the static ones keep their last 128 tokens, as the static
default router does. Encoders (`--encoders`, default all):

- `minilm`: all-MiniLM-L6-v2 (the transformer default);
- `distill-128`, `distill-256`, `distill-none`: model2vec's plain distillation with PCA to 128 (the
  static table shipped before this comparison, `scripts/build_static_default.py --plain`), to 256,
  or without PCA (384);
- `learned-<objective>-<width>`: a table trained in the manner of tokenlearn
  (`training.static_tokens.learn_token_table`) from `distill-none`, so that the mean of a prompt's
  rows reproduces MiniLM's embedding of the prompt, then reduced by PCA to `<width>` (`none`: 384).
  For each held-out task it is trained on a corpus without that task: the prompts of every other
  task of both packaged tables (their MiniLM embeddings as targets; no scores are read).

Rows are appended to `--log` as they finish and a rerun skips those already there. Last line: JSON
(per encoder, per held-out task AIQ − zero router, the mean over held-out tasks, and the
difference from MiniLM per task with a paired bootstrap's standard error over the held-out prompts,
from the routers' choices saved beside the log).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

TABLES = ("zeroeval-2024", "routerbench-0shot")
STATIC_OPTIONS = {"max_prompt_tokens": 128, "truncation_side": "left"}  # the static default router's cutting
DISTILLED = {"distill-128": 128, "distill-256": 256, "distill-none": None}
DEFAULT_ENCODERS = ("minilm", "distill-128", "distill-256", "distill-none",
                    "learned-cosine-none", "learned-cosine-256", "learned-cosine-128", "learned-tokenlearn-none")
MINILM_WIDTH = 384


def parse_learned(name: str) -> tuple[str, int | None]:
    """`learned-<objective>-<width>` → `(objective, width or None)`."""
    _, objective, width = name.split("-", 2)
    return objective, None if width == "none" else int(width)


def minilm_options(name: str) -> dict:
    from carrot_hub.data.packaged import read_router_defaults

    defaults = read_router_defaults(name)
    return {key: defaults[key] for key in ("max_prompt_tokens", "truncation_side") if key in defaults}


class Corpus:
    """One packaged table pooled (`training.evaluation.resplit.pooled_table`), with its MiniLM
    embeddings `(n, 384)` and its prompts' static token ids (the static router's tokenizing)."""

    def __init__(self, name: str, cache_dir, progress: bool):
        from carrot_hub.building import new_router
        from carrot_hub.data.packaged import resolve_table_source

        from training.embeddings import embed_table
        from training.evaluation.resplit import pooled_table

        self.name = name
        own_train, own_test, self.pooled, test_rows_in_pool = pooled_table(resolve_table_source(name))
        self.own_train_rows = np.arange(len(own_train))
        self.minilm_options = minilm_options(name)
        base = new_router(self.pooled.models, self.pooled.prices, progress=False, **self.minilm_options)
        self.minilm = torch.cat([  # embedded split by split, as the ablation does, so that the cache serves both
            embed_table(base, own_train, cache_dir=cache_dir, progress=progress),
            embed_table(base, own_test, cache_dir=cache_dir, progress=progress)[test_rows_in_pool],
        ])
        static = new_router(self.pooled.models, self.pooled.prices, encoder_kind="static", progress=False, **STATIC_OPTIONS)
        self.token_ids, _, _ = static.prompt_encoder.tokenize(static, list(self.pooled.prompts))
        self.tasks = np.asarray(self.pooled.tasks, dtype=object)


def distilled_rows(name: str, cache_dir) -> torch.Tensor:
    """`(vocab, width)` rows of a plain model2vec distillation of all-MiniLM-L6-v2 (cached under `cache_dir`;
    never the shipped table, which may be another recipe)."""
    from safetensors.torch import load_file, save_file

    path = Path(cache_dir or ".") / "static-tables" / f"{name}.safetensors"
    if path.is_file():
        return load_file(str(path))["rows"]
    from transformers import AutoModel, AutoTokenizer

    from carrot_hub.default_encoder import default_encoder_path
    from carrot_hub.distillation import _distill

    source = default_encoder_path()
    table = _distill(AutoModel.from_pretrained(source), AutoTokenizer.from_pretrained(source), DISTILLED[name], None, progress=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"rows": table.token_embeddings.float().contiguous()}, str(path))
    return table.token_embeddings.float()


def learned_rows(name: str, corpora: dict, held_out: tuple[str, str] | None, cache_dir, progress: bool,
                 epochs: int = 8) -> tuple[torch.Tensor, dict]:
    """
    The table `learned-<objective>-<width>` trained on every prompt of `corpora` except the task
    `held_out = (table, task)` (None: all), cached under `cache_dir` by name and held-out task.
    """
    from safetensors.torch import load_file, save_file

    from training.static_tokens import learn_token_table, pca_rows

    objective, width = parse_learned(name)
    label = "all" if held_out is None else f"{held_out[0]}-{held_out[1]}"
    path = Path(cache_dir or ".") / "static-tables" / f"learned-{objective}-{epochs}-epochs-without-{label}.safetensors"
    if path.is_file():
        with open(path.with_suffix(".json"), encoding="utf-8") as handle:
            report = json.load(handle)
        rows = load_file(str(path))["rows"]
    else:
        token_ids, targets = [], []
        for corpus in corpora.values():
            keep = np.ones(len(corpus.tasks), dtype=bool) if held_out is None or held_out[0] != corpus.name else corpus.tasks != held_out[1]
            token_ids += [corpus.token_ids[i] for i in np.flatnonzero(keep)]
            targets.append(corpus.minilm[torch.as_tensor(np.flatnonzero(keep))])
        began = time.perf_counter()
        log = (lambda line: print(f"  {label} {objective}: {line}", file=sys.stderr)) if progress else None
        rows, report = learn_token_table(distilled_rows("distill-none", cache_dir), token_ids, torch.cat(targets),
                                         objective=objective, max_epochs=epochs, log=log)
        report["seconds"] = round(time.perf_counter() - began, 1)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({"rows": rows.contiguous()}, str(path))
        with open(path.with_suffix(".json"), "w", encoding="utf-8") as handle:
            json.dump(report, handle)
    return (rows if width is None else pca_rows(rows, width)), report


def training_options(width: int) -> dict:
    """Router options whose encoder is `width` wide (only the width is used: the embeddings are given)."""
    if width == MINILM_WIDTH:
        return {}
    return {"encoder_kind": "static", "static_dimensions": width}


def held_out_score(corpus: Corpus, task: str, embeddings: torch.Tensor, options: dict, mu_steps: int) -> tuple[dict, dict]:
    """
    Train on the table's other tasks, score on `task`: `(scores, arrays)`, the scores AIQ, zero
    router AIQ and their difference; the arrays the router's `choices (mu_steps, n_test)` (columns of
    the true `scores` and `cost (n_test, n_models)`, also given) for the paired bootstrap.
    """
    from training.evaluation.evaluate import router_curve, summarize
    from training.knn import train_knn_router

    train_rows, test_rows = np.flatnonzero(corpus.tasks != task), np.flatnonzero(corpus.tasks == task)
    router, report = train_knn_router(corpus.pooled.subset(train_rows), embeddings=embeddings[train_rows], seed=0,
                                      progress=False, **options, **training_options(embeddings.shape[1]))
    curve, truth = router_curve(router, corpus.pooled.subset(test_rows), mu_grid=np.linspace(0, 1, mu_steps),
                                embeddings=embeddings[test_rows])
    choices, curve.choices = curve.choices, None
    results = summarize([curve], truth)
    aiq, zero = results["routers"][curve.name]["aiq"], results["zero_router"]["aiq"]
    return ({"aiq": aiq, "zero_router_aiq": zero, "aiq_minus_zero_router": aiq - zero, "k": report["k"],
             "n_train": int(train_rows.size), "n_test": int(test_rows.size)},
            {"choices": choices.astype(np.int16), "scores": truth.scores, "cost": truth.cost})


def paired_difference(scores, cost, choices_a, choices_b, resamples: int = 1000, seed: int = 0) -> dict:
    """
    (AIQ − zero router) of router a minus that of router b on the same prompts, with its standard
    error and 95% interval from a paired bootstrap over the prompts (as `aiq_vs_zero_router`, each
    router against the zero router of the same draw).

    Args:
        scores, cost: `(n_prompts, n_models)` true quality and dollars.
        choices_a, choices_b: each router's chosen column `(n_points, n_prompts)`.
    """
    from carrot_hub.cost_quality import aiq

    scores, cost = np.asarray(scores, dtype=np.float64), np.asarray(cost, dtype=np.float64)
    rows = np.arange(scores.shape[0])[None, :]
    picked = [(scores[rows, np.unique(np.asarray(c, dtype=np.int64), axis=0)], cost[rows, np.unique(np.asarray(c, dtype=np.int64), axis=0)])
              for c in (choices_a, choices_b)]

    def difference(weights: np.ndarray) -> float:
        total = weights.sum()
        single_q, single_c = weights @ scores / total, weights @ cost / total
        gaps = []
        for quality, dollars in picked:
            router_q, router_c = quality @ weights / total, dollars @ weights / total
            max_cost = max(router_c.max(), single_c.max())
            gaps.append(aiq(router_c, router_q, max_cost) - aiq(single_c, single_q, max_cost))
        return gaps[0] - gaps[1]

    n = scores.shape[0]
    rng = np.random.default_rng(seed)
    draws = np.array([difference(w) for w in rng.multinomial(n, np.full(n, 1.0 / n), size=resamples).astype(np.float64)])
    return {"difference": difference(np.ones(n)), "standard_error": float(draws.std(ddof=1)),
            "ci95": [float(np.percentile(draws, 2.5)), float(np.percentile(draws, 97.5))]}


def choices_file(log_path, encoder: str, table: str, task: str) -> Path:
    return Path(f"{log_path}.choices") / f"{encoder}--{table}--{task}.npz"


def run(encoders: Sequence[str], tables: Sequence[str], cache_dir, log_path, mu_steps: int, progress: bool,
        epochs: int = 8) -> list[dict]:
    from training.static_tokens import embed_with_rows

    done = {}
    if log_path and Path(log_path).is_file():
        for line in open(log_path, encoding="utf-8"):
            if line.strip():
                row = json.loads(line)
                done[(row["encoder"], row["table"], row["task"])] = row
    corpora = {name: Corpus(name, cache_dir, progress) for name in TABLES}  # both: the learned tables' corpus
    rows = []
    for encoder in encoders:
        for table in tables:
            corpus = corpora[table]
            for task in sorted(set(corpus.tasks)):
                if (encoder, table, task) in done:
                    rows.append(done[(encoder, table, task)])
                    continue
                began = time.perf_counter()
                extra = {}
                if encoder == "minilm":
                    embeddings, options = corpus.minilm, corpus.minilm_options
                else:
                    if encoder in DISTILLED:
                        table_rows = distilled_rows(encoder, cache_dir)
                    else:
                        table_rows, extra = learned_rows(encoder, corpora, (table, task), cache_dir, progress, epochs)
                        extra = {"learning": extra}
                    embeddings, options = embed_with_rows(table_rows, corpus.token_ids), STATIC_OPTIONS
                scores, arrays = held_out_score(corpus, task, embeddings, options, mu_steps)
                row = {"encoder": encoder, "table": table, "task": task, "width": int(embeddings.shape[1]), **scores,
                       **extra, "seconds": round(time.perf_counter() - began, 1)}
                rows.append(row)
                if log_path:
                    path = choices_file(log_path, encoder, table, task)
                    path.parent.mkdir(parents=True, exist_ok=True)
                    np.savez_compressed(path, **arrays)
                    with open(log_path, "a", encoding="utf-8") as handle:
                        handle.write(json.dumps(row) + "\n")
                if progress:
                    print(f"{encoder} {table} {task}: AIQ − zero router {row['aiq_minus_zero_router']:+.4f} "
                          f"(k {row['k']}, {row['seconds']} s)", file=sys.stderr)
    return rows


def summarize(rows: Sequence[dict], log_path=None) -> dict:
    """
    Per encoder: AIQ − zero router per held-out task, their mean, and the difference from MiniLM
    per task (with the paired bootstrap's standard error where `log_path`'s choices are saved for both).
    """
    by_encoder: dict[str, dict[str, float]] = {}
    for row in rows:
        by_encoder.setdefault(row["encoder"], {})[f"{row['table']}/{row['task']}"] = round(row["aiq_minus_zero_router"], 5)
    minilm = by_encoder.get("minilm", {})
    summary = {}
    for encoder, tasks in by_encoder.items():
        entry = {"held_out": tasks, "mean": round(float(np.mean(list(tasks.values()))), 5)}
        shared = [task for task in tasks if task in minilm]
        if shared and encoder != "minilm":
            gaps = [tasks[task] - minilm[task] for task in shared]
            entry["minus_minilm"] = {task: round(gap, 5) for task, gap in zip(shared, gaps)}
            entry["minus_minilm_mean"] = round(float(np.mean(gaps)), 5)
            entry["minus_minilm_worst"] = round(float(np.min(gaps)), 5)
            errors = {}
            for task in shared:
                mine, theirs = (choices_file(log_path, name, *task.split("/", 1)) for name in (encoder, "minilm"))
                if log_path and mine.is_file() and theirs.is_file():
                    a, b = np.load(mine), np.load(theirs)
                    errors[task] = round(paired_difference(a["scores"], a["cost"], a["choices"], b["choices"])["standard_error"], 5)
            if errors:
                entry["minus_minilm_standard_error"] = errors
        summary[encoder] = entry
    return summary


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training.static_unseen", description=__doc__.split("\n\n")[0])
    parser.add_argument("--encoders", nargs="+", default=list(DEFAULT_ENCODERS),
                        help=f"encoders to compare (default: {' '.join(DEFAULT_ENCODERS)})")
    parser.add_argument("--data", nargs="+", default=list(TABLES), help=f"packaged tables (default: {' '.join(TABLES)})")
    parser.add_argument("--mu-steps", type=int, default=201)
    parser.add_argument("--learning-epochs", type=int, default=8,
                        help="most epochs of training a learned table (default: 8, about 3 minutes each on two busy cores)")
    parser.add_argument("--cache-dir", help="folder caching prompt embeddings and the candidate tables")
    parser.add_argument("--log", help="JSON lines, one per held-out task and encoder, appended as they finish; rerun skips them")
    parser.add_argument("--out", help="results JSON (the summary and every row)")
    parser.add_argument("--quiet", action="store_true")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    bad = [name for name in args.encoders if name not in ("minilm", *DISTILLED) and not _is_learned(name)]
    bad += [name for name in args.data if name not in TABLES]
    if bad:
        print(f"error: unknown encoder or table {', '.join(bad)}; encoders: minilm, {', '.join(DISTILLED)}, "
              f"learned-<cosine|tokenlearn>-<width|none>; tables: {', '.join(TABLES)}", file=sys.stderr)
        return 2
    began = time.perf_counter()
    rows = run(args.encoders, args.data, args.cache_dir, args.log, args.mu_steps, not args.quiet, args.learning_epochs)
    summary = summarize(rows, args.log)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as handle:
            json.dump({"summary": summary, "rows": rows, "seconds": round(time.perf_counter() - began, 1)}, handle, indent=1)
    print(json.dumps({encoder: {key: value for key, value in entry.items() if key != "held_out"} | {"held_out": entry["held_out"]}
                      for encoder, entry in summary.items()}))
    return 0


def _is_learned(name: str) -> bool:
    parts = name.split("-", 2)
    return (len(parts) == 3 and parts[0] == "learned" and parts[1] in ("cosine", "tokenlearn")
            and (parts[2] == "none" or (parts[2].isdigit() and 2 <= int(parts[2]) <= MINILM_WIDTH)))


if __name__ == "__main__":
    sys.exit(main())
