"""From the store to a routing table: one row per prompt, one column per candidate, plus every cell's details.

The table goes through the project's table writer (`write_sprout_dataset`), so `carrot train`,
`carrot add-model` and `load_routing_table` read it unchanged:

    TABLE/
      README.md, prices.json, data/<split>-00000-of-00001.parquet     the SPROUT layout
      answers/<split>.parquet     one row per (prompt, model) cell: answer text, tokens (and whether
                                  they were counted rather than billed), latency, realised cost,
                                  status, score, scorer, the reason a cell is unscored, judge and its cost
      collect.json                how it was collected: sampling options, scorers per task, models

A cell's score is null (missing, never 0) when it was not asked, failed, or could not be scored;
`answers/` says which and why. Token counts are kept for answered cells even when unscored.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..atomic_writing import atomic_folder
from ..data.routing_table import RoutingTable
from ..data.writing import write_sprout_dataset
from ..errors import BadInputError
from .cell_store import CellStore
from .contracts import Scorer
from .prompt_sets import PromptItem
from .runner import scorer_for

ANSWERS_DIR = "answers"
COLLECT_FILENAME = "collect.json"
ANSWER_SCHEMA = pa.schema([
    ("key", pa.string()), ("model", pa.string()), ("status", pa.string()), ("answer", pa.string()),
    ("input_tokens", pa.int64()), ("output_tokens", pa.int64()), ("tokens_counted", pa.bool_()),
    ("latency_s", pa.float64()), ("cost", pa.float64()), ("finish_reason", pa.string()),
    ("score", pa.float64()), ("scorer", pa.string()), ("unscored_reason", pa.string()),
    ("judge_model", pa.string()), ("judge_cost", pa.float64()), ("failure", pa.string()), ("attempts", pa.int64()),
])
ANSWERED, FAILED, NOT_ASKED = "answered", "failed", "not asked"


class TableClashError(BadInputError):
    """`--into` a table that already holds a cell (or a key) this collection would write differently."""


def cell_rows(items: Sequence[PromptItem], models: Sequence[str], store: CellStore, scorers: Mapping[str, Scorer],
              scoring_errors: Mapping | None = None) -> list[dict]:
    """One record per (prompt, model) cell, in ANSWER_SCHEMA's columns (see the module docstring)."""
    rows = []
    scoring_errors = scoring_errors or {}
    for item in items:
        scorer = scorer_for(scorers, item.task)
        for model in models:
            row = {name: None for name in ANSWER_SCHEMA.names}
            row.update(key=item.key, model=model)
            answer = store.answer(item.key, model)
            if answer is None:
                failure = store.failures.get((item.key, model))
                row["status"] = FAILED if failure else NOT_ASKED
                if failure:
                    row["failure"], row["attempts"] = failure.get("reason"), failure.get("attempts")
                row["unscored_reason"] = "the upstream failed" if failure else "not asked"
                rows.append(row)
                continue
            row.update(status=ANSWERED, answer=answer.get("text"), input_tokens=answer.get("input_tokens"),
                       output_tokens=answer.get("output_tokens"), tokens_counted=bool(answer.get("tokens_counted")),
                       latency_s=answer.get("latency_s"), cost=answer.get("cost"),
                       finish_reason=answer.get("finish_reason"))
            if scorer is None:
                row["unscored_reason"] = f"no scorer for task {item.task!r} (pass --scorer {item.task}=SPEC)"
            else:
                row["scorer"] = scorer.name
                score = store.score(item.key, model, scorer.name)
                if score is None:
                    row["unscored_reason"] = scoring_errors.get((item.key, model), "not scored yet")
                else:
                    row.update(score=score.get("value"), judge_model=score.get("judge_model"),
                               judge_cost=score.get("judge_cost"))
                    if score.get("value") is None:
                        row["unscored_reason"] = score.get("reason") or "unscored"
            rows.append(row)
    return rows


def routing_table(items: Sequence[PromptItem], models: Sequence[str], rows: Sequence[dict],
                  prices: Mapping | None, split: str) -> RoutingTable:
    """The `(n_prompts, n_models)` routing table of the cell rows (NaN where no score / no answer)."""
    index = {item.key: i for i, item in enumerate(items)}
    column = {m: j for j, m in enumerate(models)}
    shape = (len(items), len(models))
    scores, n_in, n_out = np.full(shape, np.nan, np.float32), np.full(shape, np.nan, np.float32), np.full(shape, np.nan, np.float32)
    for row in rows:
        i, j = index[row["key"]], column[row["model"]]
        if row["score"] is not None and row["input_tokens"] is not None and row["output_tokens"] is not None:
            scores[i, j] = row["score"]
        if row["input_tokens"] is not None and row["output_tokens"] is not None:
            n_in[i, j], n_out[i, j] = row["input_tokens"], row["output_tokens"]
    table_prices = {m: dict(prices[m]) for m in models if prices and m in prices} or None
    return RoutingTable(
        prompts=[item.prompt for item in items], prompt_ids=[item.key for item in items],
        tasks=[item.task for item in items], models=list(models), scores=scores, input_tokens=n_in,
        output_tokens=n_out, prices=table_prices, split=split,
    )


def answers_table(rows: Sequence[dict]) -> pa.Table:
    return pa.Table.from_pylist(list(rows), schema=ANSWER_SCHEMA)


def _notes(info: Mapping) -> str:
    sampling = ", ".join(f"{k} {v}" for k, v in info["sampling"].items()) or "the upstreams' defaults"
    scorers = ", ".join(f"{task}: {spec}" for task, spec in info["scorers"].items()) or "none (every cell unscored)"
    return (
        f"Collected with `carrot collect` from the prompt set {info['prompt_set']}: each prompt asked of each "
        f"model through its upstream, sampling {sampling}; answers scored per task ({scorers}). A null score "
        "is a cell that was not asked, failed, or could not be scored: `answers/<split>.parquet` holds every "
        "cell's answer text, tokens (`tokens_counted` when the upstream reported no usage and they were counted "
        "with the router's tokenizer), latency, realised cost, scorer and the reason it is unscored. "
        "An LLM judge's cost is in `judge_cost`, never added to the judged model's cost. "
        f"Details in `{COLLECT_FILENAME}`."
    )


def write_collected_table(folder: str | os.PathLike, splits: Mapping[str, RoutingTable],
                          answers: Mapping[str, pa.Table], extra_columns: Mapping[str, Mapping],
                          prices: Mapping | None, info: Mapping, replace: bool = False,
                          keep_files_from: Path | None = None) -> Path:
    """
    Write the table folder all at once (an interrupted write leaves the old folder, or none).
    `replace` allows replacing an existing folder (our own earlier output, or the `--into` table);
    `keep_files_from` copies that folder's other files (anything but the ones written here) across.
    """
    folder = Path(folder).expanduser()
    first = next(iter(splits.values()))
    with atomic_folder(folder, replace=replace) as staging:
        if keep_files_from is not None:
            for entry in keep_files_from.iterdir():
                if entry.name in ("data", "README.md", "prices.json", ANSWERS_DIR, COLLECT_FILENAME):
                    continue
                target = staging / entry.name
                (shutil.copytree if entry.is_dir() else shutil.copy2)(entry, target)
        write_sprout_dataset(
            dict(splits), staging, pretty_name=info.get("title") or folder.name,
            description=info.get("description") or "Routing data collected with `carrot collect`.",
            provenance=info.get("provenance"), prices=prices or first.prices,
            prices_recorded_on=info.get("prices_recorded_on"), prices_source=info.get("prices_source"),
            notes=_notes(info), extra_columns=extra_columns, overwrite=True,
        )
        (staging / ANSWERS_DIR).mkdir(exist_ok=True)
        for split, table in answers.items():
            pq.write_table(table, staging / ANSWERS_DIR / f"{split}.parquet", compression="zstd")
        (staging / COLLECT_FILENAME).write_text(json.dumps(info, indent=2, default=str) + "\n", encoding="utf-8")
    return folder
