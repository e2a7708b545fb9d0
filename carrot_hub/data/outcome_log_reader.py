"""Reading a gateway's outcome log (the folder `carrot serve` writes) as routing-log records.

An outcome log is a folder of JSONL shards named `outcomes-<UTC start>-<host>-<pid>-<sequence>.jsonl`,
one writer process per shard (see `carrot_hub.serving.outcome_log_writer.OutcomeLog`), and optionally a
`prices.json` with the router's price table. Each line is one record:

    {"type": "served", "request_id": "…", "time": 1764300000.1, "prompt": "routed text",
     "model": "chosen candidate", "status": "ok", "usage": {"prompt_tokens": 12, "completion_tokens": 80}, …}
    {"type": "feedback", "request_id": "…", "time": 1764300042.7, "score": 1.0, "source": "user"}
    {"type": "feedback", "request_id": "…", "time": …, "score": 0.7, "source": "judge",
     "model": "explored candidate", "usage": {…}}
    {"type": "explored", "request_id": "…", "time": …, "chosen": …, "explored": …, "labels": {…}, …}

A feedback record's `source` is "user" (`POST /v1/feedback`; records without one are user labels) or
"judge" (judged exploration, `carrot serve --explore`). A judge label that names a `model` other than
the served one labels the candidate the gateway explored on that prompt, with that answer's `usage`:
it becomes its own cell (prompt, explored model). An "explored" record is the audit trail of one
exploration (what was asked, what it cost, unscored labels with their reason); readers skip it.
(with `--no-prompt-log` a served record holds `prompt_sha256` instead of `prompt`.) Nothing is ever
rewritten: a label is its own feedback record, joined to its served record when the log is read;
when a request got several labels, the latest (by `time`) wins.

Joined, each answered request with its prompt becomes one record of the routing-log format that
`read_routing_logs` pivots (`prompt, model, score, input_tokens, output_tokens, prompt_id, task`):
input tokens are the upstream's `prompt_tokens`, output tokens its `completion_tokens`, the score
the request's label (null when unlabelled: its token counts still teach the router about cost).
A prompt served several times by the same model becomes one cell: the mean of its labels and the
rounded mean of its token counts. Requests that cannot become a cell (not answered, no prompt
logged, no usage reported) are counted in the metadata, not treated as errors.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

SHARD_PREFIX = "outcomes-"
SHARD_SUFFIX = ".jsonl"
SERVED, FEEDBACK, EXPLORED = "served", "feedback", "explored"
SERVED_TASK = "served"


def shard_paths(folder: str | os.PathLike) -> list[Path]:
    """The folder's shard files, in name order (which is start-time order)."""
    return sorted(Path(folder).glob(f"{SHARD_PREFIX}*{SHARD_SUFFIX}"))


def is_outcome_log(folder: str | os.PathLike) -> bool:
    """True when `folder` is a directory holding at least one outcome-log shard."""
    folder = Path(folder)
    return folder.is_dir() and bool(shard_paths(folder))


def answered(record: dict) -> bool:
    """A served record whose answer reached the client (`status` "ok", or an HTTP 2xx code)."""
    status = record.get("status")
    if isinstance(status, int) and not isinstance(status, bool):
        return 200 <= status < 300
    return status == "ok"


def read_shard_lines(path: Path, start: int = 0) -> tuple[list[tuple[int, int, str | None]], int]:
    """
    Complete lines of one shard from byte `start`: `([(byte offset, line number or 0, text)], end)`,
    `end` being the offset just after the last complete line. A trailing line without its newline (a
    writer that died mid-write, or one still writing) is not returned; reading again from `end` picks
    it up once complete. Line numbers are only counted when reading from the start (else 0). A line
    that is not UTF-8 has text None (a bad line, never silently repaired with U+FFFD).
    """
    with path.open("rb") as handle:
        handle.seek(start)
        data = handle.read()
    last_newline = data.rfind(b"\n")
    if last_newline < 0:
        return [], start
    lines, offset = [], start
    for number, raw in enumerate(data[: last_newline + 1].splitlines(keepends=True), start=1):
        lines.append((offset, number if start == 0 else 0, _decoded(raw)))
        offset += len(raw)
    return lines, start + last_newline + 1


def _decoded(raw: bytes) -> str | None:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return None


def parse_line(text: str):
    """One shard line as JSON; `ValueError` naming the problem (bad JSON, or nested too deeply to read)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"not valid JSON ({error.msg})") from None
    except RecursionError:
        raise ValueError("JSON nested too deeply to be a record") from None


@dataclass
class OutcomeLogContents:
    """
    What an outcome-log folder holds, joined.

    Attributes:
        served (`dict`): request id → served record, in reading order.
        where (`dict`): request id → `"shard:line"` of its served record.
        labels (`dict`): request id → `(score, time)` of its latest feedback on the model that served it.
        explored_labels (`dict`): `(request id, model)` → `(score, time, usage)` of the latest judge
            label of a candidate explored on that request (another model than the one that served).
        orphan_feedback (`int`): feedback records whose request id has no served record in the folder.
        bad_lines (`list[dict]`): `{"line": "shard:line", "reason"}` for lines that are not valid records.
        torn_lines (`int`): unterminated last lines (a writer that died mid-line), left out.
    """

    served: dict[str, dict] = field(default_factory=dict)
    where: dict[str, str] = field(default_factory=dict)
    labels: dict[str, tuple[float, float]] = field(default_factory=dict)
    explored_labels: dict[tuple[str, str], tuple[float, float, dict | None]] = field(default_factory=dict)
    orphan_feedback: int = 0
    bad_lines: list[dict] = field(default_factory=list)
    torn_lines: int = 0


def _record_problem(record) -> str | None:
    if not isinstance(record, dict):
        return f"expected a JSON object, got {type(record).__name__}"
    kind = record.get("type")
    if kind not in (SERVED, FEEDBACK, EXPLORED):
        return f"type {kind!r} is not {SERVED!r}, {FEEDBACK!r} or {EXPLORED!r}"
    if not isinstance(record.get("request_id"), str) or not record["request_id"]:
        return "request_id must be a non-empty string"
    if kind == FEEDBACK:
        score = record.get("score")
        if isinstance(score, bool) or not isinstance(score, (int, float)) or not 0 <= score <= 1:
            return f"feedback score {score!r} is not a number in [0, 1]"
    elif record.get("model") is not None and not isinstance(record["model"], str):
        return "a served record's model must be a candidate name (or null when none answered)"
    return None


def read_outcome_log(folder: str | os.PathLike) -> OutcomeLogContents:
    """Read every shard of `folder` and join feedback to served records (latest label wins)."""
    folder = Path(folder)
    contents = OutcomeLogContents()
    feedback: list[tuple[float, int, str, float, dict]] = []
    for path in shard_paths(folder):
        lines, end = read_shard_lines(path)
        if end < path.stat().st_size:
            contents.torn_lines += 1
        for _, number, text in lines:
            where = f"{path.name}:{number}"
            if text is None:
                contents.bad_lines.append({"line": where, "reason": "not UTF-8 text"})
                continue
            if not text.strip():
                continue
            try:
                record = parse_line(text)
            except ValueError as error:
                contents.bad_lines.append({"line": where, "reason": str(error)})
                continue
            problem = _record_problem(record)
            if problem:
                contents.bad_lines.append({"line": where, "reason": problem})
            elif record["type"] == EXPLORED:
                continue  # the audit trail of an exploration: its labels are feedback records
            elif record["type"] == SERVED:
                contents.served[record["request_id"]] = record
                contents.where[record["request_id"]] = where
            else:
                when = record.get("time")
                when = float(when) if isinstance(when, (int, float)) and math.isfinite(when) else 0.0
                feedback.append((when, len(feedback), record["request_id"], float(record["score"]), record))
    for when, _, request_id, score, record in sorted(feedback, key=lambda f: f[:2]):
        served = contents.served.get(request_id)
        if served is None:
            contents.orphan_feedback += 1
        elif isinstance(record.get("model"), str) and record["model"] != served.get("model"):
            usage = record.get("usage") if isinstance(record.get("usage"), dict) else None
            contents.explored_labels[(request_id, record["model"])] = (score, when, usage)
        else:
            contents.labels[request_id] = (score, when)
    return contents


EMPTY_PROMPT = "prompt is empty (nothing but whitespace, control or zero-width characters)"


def prompt_has_content(prompt: str) -> bool:
    """The router's own test of an empty prompt (imported late: reading a log needs no torch until here)."""
    from ..modeling_carrot import prompt_has_content as router_test

    return router_test(prompt)


def _line_order(where: str) -> tuple[str, int]:
    shard, _, number = where.rpartition(":")
    return shard, int(number) if number.isdigit() else 0


def prompt_key(prompt: str) -> str:
    """The row id of a served prompt: its text's SHA-256 (a prompt served twice is one row)."""
    return "sha256-" + hashlib.sha256(prompt.encode("utf-8")).hexdigest()[:32]


def _token_count(usage, key) -> int | None:
    value = usage.get(key) if isinstance(usage, dict) else None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        return None
    return int(value)


def outcome_log_records(folder: str | os.PathLike) -> tuple[list[dict], dict]:
    """
    An outcome-log folder as routing-log records (see the module docstring), plus what was left out:
    `(records, summary)`, summary keys `served`, `labelled`, `explored_labelled`, `cells`, `repeats_merged`,
    `not_answered`, `without_prompt`, `without_usage`, `orphan_feedback`, `torn_lines`, `bad_lines`.
    """
    contents = read_outcome_log(folder)
    summary = {
        "served": len(contents.served), "labelled": len(contents.labels),
        "explored_labelled": len(contents.explored_labels), "cells": 0, "repeats_merged": 0,
        "not_answered": 0, "without_prompt": 0, "without_usage": 0,
        "orphan_feedback": contents.orphan_feedback, "torn_lines": contents.torn_lines,
        "bad_lines": list(contents.bad_lines),
    }
    cells: dict[tuple[str, str], dict] = {}
    for request_id, record in contents.served.items():
        if not answered(record) or record.get("model") is None:
            summary["not_answered"] += 1
            continue
        prompt = record.get("prompt")
        if not isinstance(prompt, str):
            summary["without_prompt"] += 1
            continue
        if not prompt_has_content(prompt):  # e.g. a pinned request of zero-width characters: nothing to learn from
            summary["bad_lines"].append({"line": contents.where[request_id], "reason": EMPTY_PROMPT})
            continue
        usage = record.get("usage")
        n_in, n_out = _token_count(usage, "prompt_tokens"), _token_count(usage, "completion_tokens")
        if n_in is None or n_out is None:
            summary["without_usage"] += 1
            continue
        key = (prompt_key(prompt), record["model"])
        cell = cells.setdefault(key, {"prompt": prompt, "scores": [], "input": [], "output": []})
        cell["input"].append(n_in)
        cell["output"].append(n_out)
        if request_id in contents.labels:
            cell["scores"].append(contents.labels[request_id][0])
    for (request_id, model), (score, _, usage) in contents.explored_labels.items():
        prompt = contents.served[request_id].get("prompt")
        n_in, n_out = _token_count(usage, "prompt_tokens"), _token_count(usage, "completion_tokens")
        if not isinstance(prompt, str) or not prompt_has_content(prompt) or n_in is None or n_out is None:
            continue  # counted with its served record already (no prompt), or the explored answer had no usage
        cell = cells.setdefault((prompt_key(prompt), model), {"prompt": prompt, "scores": [], "input": [], "output": []})
        cell["input"].append(n_in)
        cell["output"].append(n_out)
        cell["scores"].append(score)
    summary["bad_lines"] = sorted(summary["bad_lines"], key=lambda bad: _line_order(bad["line"]))
    records = []
    for (prompt_id, model), cell in cells.items():
        summary["repeats_merged"] += len(cell["input"]) - 1
        records.append(
            {
                "prompt": cell["prompt"],
                "model": model,
                "score": sum(cell["scores"]) / len(cell["scores"]) if cell["scores"] else None,
                "input_tokens": round(sum(cell["input"]) / len(cell["input"])),
                "output_tokens": round(sum(cell["output"]) / len(cell["output"])),
                "prompt_id": prompt_id,
                "task": SERVED_TASK,
            }
        )
    summary["cells"] = len(records)
    return records, summary


def iter_shard_records(folder: str | os.PathLike) -> Iterator[tuple[str, dict]]:
    """Every parseable record of every shard as `(where, record)`, in file order (for tools and tests)."""
    for path in shard_paths(folder):
        lines, _ = read_shard_lines(path)
        for _, number, text in lines:
            if text is not None and text.strip():
                try:
                    yield f"{path.name}:{number}", parse_line(text)
                except ValueError:
                    continue
