"""A user's own routing logs (JSONL, one record per prompt × model) -> RoutingTable / SPROUT-layout folder.

Each line is one JSON object:

    {"prompt": "text", "model": "name", "score": 0.8, "input_tokens": 120, "output_tokens": 300,
     "prompt_id": "optional id", "task": "optional source task", "split": "optional: train / test / ..."}

`score` in [0, 1] (null = not graded); token counts are non-negative integers. Records are pivoted to one
row per prompt (grouped by `prompt_id`, else by the prompt text) and one column per model, models in the
order they first appear. A (prompt, model) pair with no record is a missing cell (NaN), counted in
`table.metadata["missing_cells"]`; pass `require_all_models=True` to treat it as an error instead.

`split` keeps a source's own split (a published benchmark's official train/test): all records of a
prompt must name the same split; records without one belong to `train`. `convert_routing_logs`
writes one split per name.

The outcome-log folder a `carrot serve` gateway writes (JSONL shards of served requests and their
feedback, see `carrot_hub.data.outcome_log_reader`) is read the same way: pass the folder instead of a file.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import warnings
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from .prices import validate_prices
from .routing_table import RoutingTable
from .validation import RoutingDataError

REQUIRED_KEYS = ("prompt", "model", "score", "input_tokens", "output_tokens")
DEFAULT_SPLIT = "train"  # of a record that names none
_SPLIT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


def _finite(value) -> float | None:
    """`value` as a finite float, or None for non-numbers, booleans, NaN, ±Infinity and 1e400-sized numbers."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        value = float(value)  # an integer of 400 digits overflows here
    except OverflowError:
        return None
    return value if math.isfinite(value) else None


def _check_record(record) -> str | None:
    """The problem with one parsed record, or None."""
    if not isinstance(record, dict):
        return f"expected a JSON object, got {type(record).__name__}"
    lacking = [key for key in REQUIRED_KEYS if key not in record]
    if lacking:
        return f"lacks {lacking}"
    prompt = record["prompt"]
    if not isinstance(prompt, str):
        return "prompt is not text"
    from .outcome_log_reader import EMPTY_PROMPT, prompt_has_content

    if not prompt_has_content(prompt):  # the router's test: zero-width characters are empty too
        return EMPTY_PROMPT
    if not isinstance(record["model"], str) or not record["model"].strip():
        return "model must be a non-empty string"
    score = record["score"]
    if score is not None:
        if _finite(score) is None:
            return f"score {score!r:.40} is not a number"
        if not 0 <= score <= 1:
            return f"score {score!r} is outside [0, 1]"
    for key in ("input_tokens", "output_tokens"):
        value = _finite(record[key])
        if value is None or value < 0 or value != int(value):
            return f"{key} {record[key]!r:.40} is not a non-negative integer"
    for key in ("prompt_id", "task"):
        if record.get(key) is not None and not isinstance(record[key], (str, int)):
            return f"{key} must be a string"
    split = record.get("split")
    if split is not None and (not isinstance(split, str) or not _SPLIT_NAME.match(split)):
        return f"split {split!r} must be a name of letters, digits, '_' or '-' (e.g. train, test)"
    return None


def read_routing_logs(
    path: str | os.PathLike,
    on_error: str = "raise",
    prices: Mapping | None = None,
    split: str | None = None,
    require_all_models: bool = False,
) -> RoutingTable:
    """
    Read a JSONL log file (see module docstring), or the outcome-log folder of a `carrot serve`
    gateway (see `carrot_hub.data.outcome_log_reader`), into a RoutingTable `(n_prompts, n_models)`.

    on_error="raise" stops at the first bad line, naming its line number; "skip" leaves bad lines out,
    warns with their count and lists them (`{"line", "reason"}`) in `table.metadata["skipped"]`.
    For an outcome log, a `prices.json` in the folder wins over `prices`; what the gateway served but
    cannot be a cell (unanswered requests, prompts not logged, no usage) is counted in
    `table.metadata["outcome_log"]`.
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', not {on_error!r}.")
    path = Path(path)
    if path.is_dir():
        return _read_outcome_log_table(path, on_error, prices, split, require_all_models)
    if not path.is_file():
        raise FileNotFoundError(f"No such log file: {path}.")
    return _pivot_records(_jsonl_lines(path), path, path.name, on_error, prices, split, require_all_models, {})


def _jsonl_lines(path: Path):
    """
    `(line number, parsed record, or the JSONDecodeError / UnicodeDecodeError)` for each non-blank
    line of a JSONL file; each line is decoded on its own, so a line that is not UTF-8 is one bad line.
    """
    with path.open("rb") as handle:
        for line_number, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            try:
                yield line_number, json.loads(raw.decode("utf-8-sig" if line_number == 1 else "utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError) as error:
                yield line_number, error
            except RecursionError as error:  # a line of thousands of nested brackets
                yield line_number, error


def _read_outcome_log_table(folder: Path, on_error, prices, split, require_all_models) -> RoutingTable:
    from .outcome_log_reader import is_outcome_log, outcome_log_records
    from .prices import PRICES_FILENAME, read_prices_file

    if not is_outcome_log(folder):
        raise FileNotFoundError(
            f"{folder} is a folder but holds no outcome-log shards (outcomes-*.jsonl); pass a JSONL log file "
            "or the folder `carrot serve --log-dir` writes."
        )
    records, summary = outcome_log_records(folder)
    if summary["bad_lines"] and on_error == "raise":
        first = summary["bad_lines"][0]
        raise RoutingDataError(
            f"{folder} {first['line']}: {first['reason']}. Fix the line, or leave bad lines out with on_error='skip' (carrot train --on-error skip)."
        )
    if (folder / PRICES_FILENAME).is_file():
        prices = _served_models_prices(read_prices_file(folder / PRICES_FILENAME)["prices"], records, folder)
    if not records:
        raise RoutingDataError(
            f"{folder} holds no served request that can become routing data ({summary['served']} served: "
            f"{summary['not_answered']} not answered, {summary['without_prompt']} without their prompt "
            f"(--no-prompt-log), {summary['without_usage']} without token usage)."
        )
    entries = ((f"record {number}", record) for number, record in enumerate(records, start=1))
    table = _pivot_records(entries, folder, folder.name, on_error, prices, split, require_all_models, summary)
    if summary["bad_lines"]:
        table.metadata["skipped"] = list(summary["bad_lines"]) + table.metadata["skipped"]
        warnings.warn(
            f"Skipped {len(summary['bad_lines'])} bad lines of the outcome log {folder}: "
            + "; ".join(f"{s['line']} ({s['reason']})" for s in summary["bad_lines"][:3])
            + ". The full list is in table.metadata['skipped'].",
            stacklevel=3,
        )
    return table


def _served_models_prices(prices: dict, records: list[dict], folder: Path) -> dict:
    """
    The log's price table cut to the models it served. The gateway writes every candidate's price,
    but a candidate it never called (no upstream for it, or never chosen) has no data to train on.
    """
    served = {record["model"] for record in records}
    unserved = sorted(name for name in prices if name not in served)
    if unserved:
        warnings.warn(
            f"{folder}: left out the prices of {', '.join(unserved)}, which the log never served; the router "
            "trained on it routes among the models it served.",
            stacklevel=4,
        )
    return {name: price for name, price in prices.items() if name in served}


def _pivot_records(entries, path: Path, name: str, on_error, prices, split, require_all_models, outcome_summary) -> RoutingTable:
    """Pivot `(line, record or JSONDecodeError)` entries into a RoutingTable (one row per prompt)."""
    skipped: list[dict] = []

    def bad(line_number, reason: str):
        if on_error == "raise":
            raise RoutingDataError(
                f"{name} line {line_number}: {reason}. Fix the line, or leave bad lines out with on_error='skip' (carrot train --on-error skip)."
            )
        skipped.append({"line": line_number, "reason": reason})

    rows: dict[str, int] = {}  # prompt id -> row
    prompts, ids, tasks, row_splits = [], [], [], []
    models: dict[str, int] = {}
    cells: dict[tuple[int, int], tuple[float, float, float, int]] = {}
    n_lines = 0
    for line_number, record in entries:
        n_lines += 1
        if isinstance(record, json.JSONDecodeError):
            bad(line_number, f"not valid JSON ({record.msg})")
            continue
        if isinstance(record, RecursionError):
            bad(line_number, "JSON nested too deeply to be a record")
            continue
        if isinstance(record, UnicodeDecodeError):
            bad(line_number, f"not UTF-8 text (byte {record.object[record.start:record.start + 1]!r} "
                             f"at column {record.start + 1})")
            continue
        problem = _check_record(record)
        if problem:
            bad(line_number, problem)
            continue
        prompt_id = record.get("prompt_id")
        prompt_id = str(prompt_id) if prompt_id is not None else "sha1-" + hashlib.sha1(record["prompt"].encode()).hexdigest()[:16]
        row = rows.get(prompt_id)
        if row is None:
            row = rows[prompt_id] = len(prompts)
            prompts.append(record["prompt"])
            ids.append(prompt_id)
            tasks.append("" if record.get("task") is None else str(record["task"]))
            row_splits.append(record.get("split") or DEFAULT_SPLIT)
        elif prompts[row] != record["prompt"]:
            bad(line_number, f"prompt_id {prompt_id!r} was used earlier for a different prompt")
            continue
        elif (record.get("split") or DEFAULT_SPLIT) != row_splits[row]:
            bad(line_number, f"prompt {prompt_id!r} is in split {row_splits[row]!r} on an earlier line and in "
                             f"{record.get('split') or DEFAULT_SPLIT!r} here: a prompt belongs to one split")
            continue
        column = models.setdefault(record["model"], len(models))
        if (row, column) in cells:
            bad(line_number, f"a second record for prompt {prompt_id!r} and model {record['model']!r} "
                             f"(first on line {cells[(row, column)][3]})")
            continue
        score = np.nan if record["score"] is None else float(record["score"])
        cells[(row, column)] = (score, float(record["input_tokens"]), float(record["output_tokens"]), line_number)
    if not cells:
        raise RoutingDataError(f"{path} holds no valid records ({n_lines} lines read).")

    shape = (len(prompts), len(models))
    scores, input_tokens, output_tokens = (np.full(shape, np.nan, dtype=np.float32) for _ in range(3))
    for (row, column), (score, n_in, n_out, _) in cells.items():
        scores[row, column], input_tokens[row, column], output_tokens[row, column] = score, n_in, n_out
    no_record = np.isnan(input_tokens)
    if require_all_models and no_record.any():
        row, column = np.argwhere(no_record)[0]
        raise RoutingDataError(
            f"{name}: prompt {ids[row]!r} has no record for model {list(models)[column]!r} "
            f"({int(no_record.sum())} such pairs); log every model on every prompt or drop require_all_models."
        )
    metadata = {"source": str(path), "records_read": n_lines, "skipped": skipped, "missing_cells": int(no_record.sum())}
    if set(row_splits) != {DEFAULT_SPLIT}:  # the records named their splits: `split_by_record` reads them
        metadata["row_splits"] = row_splits
    if outcome_summary:
        metadata["outcome_log"] = {key: value for key, value in outcome_summary.items() if key != "bad_lines"}
    table = RoutingTable(
        prompts=prompts,
        prompt_ids=ids,
        tasks=tasks,
        models=list(models),
        scores=scores,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        prices=None if prices is None else validate_prices(prices),
        split=split,
        metadata=metadata,
    )
    if skipped:
        warnings.warn(
            f"Skipped {len(skipped)} of {n_lines} lines of {name}: "
            + "; ".join(f"line {s['line']} ({s['reason']})" for s in skipped[:3])
            + (" ..." if len(skipped) > 3 else "")
            + ". The full list is in table.metadata['skipped'].",
            stacklevel=3,
        )
    return table


def convert_routing_logs(
    path: str | os.PathLike,
    output: str | os.PathLike,
    prices: Mapping | None = None,
    prices_recorded_on: str | None = None,
    on_error: str = "raise",
    validation_fraction: float | None = None,
    seed: int = 0,
    stratify_by_task: bool = False,
    overwrite: bool = False,
    **card,
) -> dict[str, RoutingTable]:
    """
    JSONL logs -> SPROUT-layout dataset folder (parquet + card + prices.json), one split per `split`
    named in the records (records without one: `train`), so a source's own train/test split is kept.
    With `validation_fraction`, a seeded validation split is cut from `train` (see `split_table`).
    `card` goes to `write_sprout_dataset` (pretty_name, description, license, provenance, notes).
    Returns `{split: table}`.
    """
    from .splitting import split_table
    from .writing import write_sprout_dataset

    tables = split_by_record(read_routing_logs(path, on_error=on_error, prices=prices, split=DEFAULT_SPLIT))
    if validation_fraction:
        if "validation" in tables:
            raise RoutingDataError(f"{Path(path).name} already names a 'validation' split; drop validation_fraction to keep it.")
        if DEFAULT_SPLIT not in tables:
            raise RoutingDataError(f"{Path(path).name} has no '{DEFAULT_SPLIT}' records to cut a validation split from.")
        cut = split_table(tables.pop(DEFAULT_SPLIT), validation_fraction, seed=seed, stratify_by_task=stratify_by_task)
        tables = {**cut, **tables}
    card.setdefault("provenance", f"Converted from the routing log {Path(path).name} by carrot_hub.convert_routing_logs.")
    write_sprout_dataset(tables, output, prices_recorded_on=prices_recorded_on, overwrite=overwrite, **card)
    return tables


def split_by_record(table: RoutingTable) -> dict[str, RoutingTable]:
    """`{split: its rows of table}` by the `split` its records named (`read_routing_logs` keeps them in
    `table.metadata["row_splits"]`, taken out here), in order of first appearance."""
    row_splits = table.metadata.pop("row_splits", None) or [table.split or DEFAULT_SPLIT] * len(table)
    names = list(dict.fromkeys(row_splits))
    if len(names) == 1:
        table.split = names[0]
        return {names[0]: table}
    tables = {}
    for name in names:
        part = table.subset(np.flatnonzero(np.asarray(row_splits) == name))
        part.split = name
        tables[name] = part
    return tables
