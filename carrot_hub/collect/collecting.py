"""`carrot_hub.collect(...)`: a prompt set × the user's upstreams → scored answers → a routing table.

Every check that can fail on the user's input runs before the first call (unknown models, no prompt
column, bad scorers, a scorer needing references the rows lack, a negative or unpriceable
`max_spend`, an output that would replace someone's folder, an `--into` clash), so a bad command
costs nothing and loses nothing already collected.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..data.prices import validate_prices
from ..errors import BadInputError
from ..serving.upstreams import (RetryPolicy, UpstreamConfigError, UpstreamPool, UpstreamSpec, parse_upstreams,
                                 read_upstreams_file)
from .asking import Asker, TokenCounter
from .cell_store import CellStore, StoreError
from .contracts import Scorer
from .prompt_sets import PromptSet, read_log_prompt_set, read_prompt_set
from .runner import CollectionRun, RunCounts
from .spending import SpendTracker
from .summary import summarise
from .table_building import COLLECT_FILENAME, answers_table, cell_rows, routing_table, write_collected_table

STORE_SUFFIX = ".cells"


class CollectError(BadInputError):
    """A collection that cannot start as asked (the message says what to change)."""


@dataclass
class CollectResult:
    """What a collection did: where the table is, the per-model summary, this run's counts and spend."""

    table: Path
    store: Path
    summary: list[dict]
    counts: RunCounts
    spent: float
    judge_spent: float
    stopped_by_max_spend: bool
    elapsed_s: float
    prompts: int
    models: list[str]
    failed_cells: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """No cell of the table is failed (a failed upstream makes the command exit non-zero)."""
        return self.failed_cells == 0

    def to_json(self) -> dict:
        return {
            "table": str(self.table), "store": str(self.store), "prompts": self.prompts, "models": self.models,
            "asked": self.counts.asked, "answered": self.counts.answered, "failed": self.counts.failed,
            "failed_cells": self.failed_cells, "scored": self.counts.scored,
            "scoring_failed": self.counts.scoring_failed, "not_asked": self.counts.not_asked,
            "not_judged": self.counts.not_judged,
            "spent": self.spent, "judge_spent": self.judge_spent, "stopped_by_max_spend": self.stopped_by_max_spend,
            "elapsed_s": self.elapsed_s, "summary": self.summary,
        }


def _upstream_specs(upstreams) -> dict[str, UpstreamSpec]:
    try:
        if isinstance(upstreams, (str, os.PathLike)):
            return read_upstreams_file(upstreams)
        if isinstance(upstreams, Mapping) and upstreams and all(isinstance(v, UpstreamSpec) for v in upstreams.values()):
            return dict(upstreams)
        return parse_upstreams(upstreams)
    except UpstreamConfigError as error:
        raise CollectError(str(error)) from None


def _models(models, specs: Mapping[str, UpstreamSpec]) -> list[str]:
    if models is None:
        return list(specs)
    if isinstance(models, str):
        models = [m for m in models.split(",")]
    names = [m.strip() for m in models if m and m.strip()]
    if not names:
        raise CollectError("--models names no model; give candidate names from the upstreams file.")
    unknown = [m for m in names if m not in specs]
    if unknown:
        raise CollectError(f"{', '.join(map(repr, unknown))} not in the upstreams file, which names "
                           f"{', '.join(specs)}: add an upstream for it or fix --models.")
    return list(dict.fromkeys(names))


def build_scorers(scorers, ask, candidates: Sequence[str], allow_code_execution: bool) -> tuple[dict, dict]:
    """
    `({task: Scorer}, {task: scorer name})` from `scorers`: None, spec strings (`["gsm8k=number",
    "default=judge:gpt-4o"]`, a bare spec meaning `default`), or a mapping task → spec or `Scorer`.
    Unknown scorers, a judge that is not an upstream and `code` without `allow_code_execution` raise
    `ScorerSpecError` (see `carrot_hub.collect.scorers`).
    """
    from . import scorers as scoring

    if not scorers:
        return {}, {}
    if isinstance(scorers, str):
        scorers = [scorers]
    specs = dict(scorers) if isinstance(scorers, Mapping) else scoring.parse_scorer_specs(list(scorers))
    by_spec = scoring.build_scorers({t: s for t, s in specs.items() if isinstance(s, str)}, ask=ask,
                                    candidates=list(candidates), allow_code_execution=allow_code_execution)
    built = {task: by_spec.get(task, spec) for task, spec in specs.items()}
    return built, {task: scorer.name for task, scorer in built.items()}


def _check_scorer_inputs(prompt_set: PromptSet, scorers: Mapping[str, Scorer]) -> None:
    """Every task has a scorer, and no row lacks the reference (or tests) its scorer needs: else say how many."""
    from .scorers import check_scorer_inputs

    if scorers:
        check_scorer_inputs(scorers, ((item.task, item.reference, item.tests) for item in prompt_set.items))


def _prices(prices, *fallbacks) -> dict:
    if prices is not None:
        if isinstance(prices, Mapping) and isinstance(prices.get("prices"), Mapping):
            prices = prices["prices"]
        try:
            return validate_prices(prices, where="--prices")
        except ValueError as error:
            raise CollectError(str(error)) from None
    merged = {}
    for fallback in fallbacks:
        for model, price in (fallback or {}).items():
            merged.setdefault(model, price)
    return merged


def _own_output(folder: Path, store: Path) -> bool:
    """True when `folder` is a table this store wrote before (a rerun may replace it)."""
    info = folder / COLLECT_FILENAME
    try:
        return Path(json.loads(info.read_text(encoding="utf-8")).get("store", "")).resolve() == store.resolve()
    except (OSError, ValueError, AttributeError):
        return False


def collect(
    prompts: str | os.PathLike | None = None,
    upstreams=None,
    *,
    models: Sequence[str] | str | None = None,
    out: str | os.PathLike | None = None,
    into: str | os.PathLike | None = None,
    from_log: str | os.PathLike | None = None,
    only_out_of_distribution: bool = False,
    scorers=None,
    allow_code_execution: bool = False,
    max_spend: float | None = None,
    prices: Mapping | None = None,
    temperature: float | None = 0.0,
    max_tokens: int | None = None,
    limit: int | None = None,
    split: str = "train",
    streaming: bool = False,
    store: str | os.PathLike | None = None,
    retries: RetryPolicy | None = None,
    progress: bool = True,
    environ: Mapping[str, str] | None = None,
) -> CollectResult:
    """
    Ask each model of `upstreams` each prompt of `prompts`, score the answers, and write a routing
    table (`out`: a new folder; `into`: add columns or rows to an existing table).

    Args:
        prompts: a packaged table name, a SPROUT-layout folder, a JSONL/JSON/CSV/Parquet file, or a Hub
            data set id (columns `prompt` or `messages`; optional `key`, `reference`/`golden_answer`,
            `task`/`dataset`, `tests`). Leave it out with `from_log`.
        upstreams: the upstreams file of `carrot serve` (path), or its parsed mapping.
        models: the candidates to ask (default: every upstream).
        from_log: an outcome-log folder of `carrot serve` instead of `prompts`;
            `only_out_of_distribution` keeps the prompts its router flagged.
        scorers: spec strings (`["gsm8k=number", "default=judge:gpt-4o"]`) or `{task: spec or Scorer}`.
        allow_code_execution: let the `code` scorer run answers' code (not a security sandbox).
        max_spend: US$ this run may spend (candidates and judges); stops before the estimate passes it.
        prices: `{model: {"input", "output"}}` $/M tokens (default: the `into` table's, then the prompt set's).
        temperature, max_tokens: sampling options sent with every request and recorded in the table.
        limit: ask only the first N prompts.
        split: the split of a table prompt set, and the split of `into` that gets the rows.
        streaming: stream a Hub data set instead of downloading it.
        store: the append-only store of answers (default: `<table>.cells` beside the table).
        retries: backoff policy for 429/5xx/timeouts.

    Returns:
        A `CollectResult`; `result.ok` is False when some cells failed every retry.
    """
    started = time.perf_counter()
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        raise CollectError("collect() runs its own event loop and cannot be called from a running one (a notebook "
                           "cell, an async function): call it from a thread, e.g. await asyncio.to_thread(collect, ...).")
    if (out is None) == (into is None):
        raise CollectError("Give exactly one of out (a new table folder) or into (an existing table to extend).")
    if (prompts is None) == (from_log is None):
        raise CollectError("Give the prompts one way: a prompt set (PROMPTS) or an outcome log (--from-log), not both or neither.")
    if only_out_of_distribution and from_log is None:
        raise CollectError("--only-out-of-distribution picks prompts of an outcome log: use it with --from-log.")
    if max_spend is not None and (isinstance(max_spend, bool) or not isinstance(max_spend, (int, float))
                                  or not max_spend >= 0):
        raise CollectError(f"--max-spend must be a number of US dollars ≥ 0, got {max_spend!r}.")
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise CollectError(f"--limit must be a positive number of prompts, got {limit!r}.")
    if max_tokens is not None and (not isinstance(max_tokens, int) or max_tokens < 1):
        raise CollectError(f"--max-tokens must be a positive integer, got {max_tokens!r}.")
    if upstreams is None:
        raise CollectError("Give the upstreams file (--upstreams FILE), the one carrot serve reads.")
    specs = _upstream_specs(upstreams)
    chosen = _models(models, specs)

    target = Path(out if out is not None else into).expanduser()
    store_path = Path(store).expanduser() if store is not None else target.with_name(target.name + STORE_SUFFIX)
    existing = None
    if into is not None:
        from .into_table import read_existing_table

        existing = read_existing_table(target)
    elif target.exists() and (not target.is_dir() or any(target.iterdir())) and not _own_output(target, store_path):
        raise FileExistsError(f"--out {target} exists and was not written by this collection; choose a new folder, "
                              "or pass --into to add to it.")

    if from_log is not None:
        prompt_set = read_log_prompt_set(from_log, only_out_of_distribution=only_out_of_distribution, limit=limit)
    else:
        prompt_set = read_prompt_set(prompts, split=split, streaming=streaming, limit=limit)
    table_prices = _prices(prices, existing.prices if existing else None, prompt_set.prices)
    sampling = {"temperature": temperature, "max_tokens": max_tokens}
    spend = SpendTracker(max_spend, table_prices, chosen, max_tokens)

    counter = TokenCounter()
    asker = Asker(None, table_prices, retries, counter)  # its pool opens inside the run's event loop
    built, scorer_names = build_scorers(scorers, asker, list(specs), allow_code_execution)
    spend.require_prices({judge for scorer in built.values() if (judge := getattr(scorer, "judge", None))})
    _check_scorer_inputs(prompt_set, built)
    with CellStore.open(store_path, sampling) as cells:
        _check_same_prompts(prompt_set, chosen, cells)
        run = CollectionRun(prompt_set.items, chosen, cells, asker, built, sampling, spend,
                            {m: specs[m].max_concurrency for m in chosen}, counter, progress)
        counts = asyncio.run(_run_with_pool(run, asker, specs, environ))
        rows = cell_rows(prompt_set.items, chosen, cells, built, counts.scoring_errors)
    table = routing_table(prompt_set.items, chosen, rows, table_prices, split)
    info = {
        "collected_by": "carrot collect", "prompt_set": prompt_set.description, "split": split,
        "models": chosen, "sampling": {k: v for k, v in sampling.items() if v is not None},
        "scorers": scorer_names, "store": str(store_path.resolve()),
        "upstreams": {m: {"base_url": specs[m].base_url, "model": specs[m].model} for m in chosen},
        "prices_recorded_on": None, "prices_source": "--prices" if prices is not None else "the table or prompt set",
        "written": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    golden = {"golden_answer": [item.reference for item in prompt_set.items]}
    answers = answers_table(rows)
    if existing is None:
        write_collected_table(target, {split: table}, {split: answers}, {split: golden}, table_prices, info,
                              replace=True)
    else:
        from .into_table import merge_into

        splits, extras, merged_answers = merge_into(existing, split, table, golden, answers)
        merged_prices = {**table_prices, **(existing.prices or {})}
        info.update(prices_recorded_on=existing.prices_recorded_on, prices_source=existing.prices_source)
        write_collected_table(target, splits, merged_answers, extras, merged_prices, info, replace=True,
                              keep_files_from=target)
    summary = summarise(rows, chosen)
    failed_cells = sum(row["status"] == "failed" for row in rows)
    return CollectResult(
        table=target, store=store_path, summary=summary, counts=counts, spent=spend.spent,
        judge_spent=spend.judge_spent, stopped_by_max_spend=spend.stopped, elapsed_s=time.perf_counter() - started,
        prompts=len(prompt_set), models=chosen, failed_cells=failed_cells,
    )


async def _run_with_pool(run: CollectionRun, asker: Asker, specs, environ) -> RunCounts:
    asker.pool = UpstreamPool(specs, environ=environ)
    try:
        return await run.run()
    finally:
        await asker.pool.aclose()


def _check_same_prompts(prompt_set: PromptSet, models: Sequence[str], cells: CellStore) -> None:
    """A stored cell under a key of this prompt set must have been asked the same prompt."""
    for item in prompt_set.items:
        for model in models:
            stored = cells.answer(item.key, model)
            if stored is not None and stored.get("prompt_sha256") != item.prompt_sha256:
                raise StoreError(
                    f"The store {cells.folder} holds an answer of {model!r} to another prompt under the key "
                    f"{item.key!r}: this prompt set reuses keys for other prompts. Collect into another table "
                    "(or pass another --store)."
                )
