"""New labels from outcome logs, each read once: what `carrot learn` applies to a router.

A log is a set of JSONL shards (`outcomes-*.jsonl`, see `carrot_hub.serving.outcome_log_writer`), in a
folder (any depth: one sub-folder per replica is fine) or in a Hub data set (as `--push-logs` ships
them), read with `datasets`. Shards only grow, so a reader's position is, per shard, how far it has
read: byte offsets for a folder, line counts for a data set. The position is saved with the router
revision it produced (learning.json), so a restarted `carrot learn` resumes exactly after the last
label it published: no label is skipped or applied twice.

A label is a feedback record (`source` "user", the default, or "judge") joined to the served record
of its request, which may sit in another shard (another worker or replica served it). Feedback
whose served record has not been read yet waits (`pending`, kept in the position) until it appears,
up to `max_pending_seconds`; a judge label may name another `model` than the one that served (it
labels a candidate the gateway explored), with its own `usage`.

Lines that are not valid records are skipped and counted (`bad_lines`); an unterminated last line
(a writer still writing, or one that died mid-line) is left unread and counted (`torn_lines`) until
it is complete.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from .data.outcome_log_reader import EXPLORED, FEEDBACK, SERVED, SHARD_PREFIX, SHARD_SUFFIX, answered, read_shard_lines

SOURCES = ("user", "judge")


@dataclass(frozen=True)
class Label:
    """One quality label ready for `remember()`: the prompt, the candidate it scores, the score in [0, 1]."""

    request_id: str
    prompt: str
    model: str
    score: float
    output_tokens: float | None
    source: str
    time: float


class FolderLogSource:
    """Shards under a local folder (recursively), read by byte offset."""

    kind = "folder"

    def __init__(self, folder):
        self.folder = Path(folder).expanduser()
        if not self.folder.is_dir():
            raise FileNotFoundError(f"The outcome log {self.folder} is not a folder (give the --log-dir of carrot serve).")

    def __str__(self) -> str:
        return str(self.folder)

    def files(self) -> list[str]:
        return sorted(str(p.relative_to(self.folder)) for p in self.folder.rglob(f"{SHARD_PREFIX}*{SHARD_SUFFIX}"))

    def read(self, name: str, start: int) -> tuple[list[str], int, bool]:
        """Complete lines from `start` → `(lines, new position, an unterminated last line is waiting)`."""
        path = self.folder / name
        try:
            lines, end = read_shard_lines(path, start)
            size = path.stat().st_size
        except FileNotFoundError:
            return [], start, False
        return [text for _, _, text in lines], end, end < size

    def consumed(self, name: str, position: int) -> list[str]:
        """The lines before `position` (already read)."""
        try:
            with (self.folder / name).open("rb") as handle:
                data = handle.read(position)
        except FileNotFoundError:
            return []
        return data.decode("utf-8", errors="replace").splitlines()


class DatasetLogSource:
    """
    Shards of a Hub data set (`repo_id`) or of a local copy of one (`folder`), each read with
    `datasets.load_dataset("text")` (one row per line, parsed here, so records of any shape load),
    by line count.
    """

    kind = "dataset"

    def __init__(self, repo_id: str | None = None, folder=None, token: str | None = None):
        if (repo_id is None) == (folder is None):
            raise ValueError("Give a Hub data set id or a local folder, not both.")
        self.repo_id, self.token = repo_id, token
        self.folder = None if folder is None else Path(folder).expanduser()
        if self.folder is not None and not self.folder.is_dir():
            raise FileNotFoundError(f"The log data set copy {self.folder} is not a folder.")

    def __str__(self) -> str:
        return self.repo_id or str(self.folder)

    def files(self) -> list[str]:
        if self.folder is not None:
            return sorted(str(p.relative_to(self.folder)) for p in self.folder.rglob(f"{SHARD_PREFIX}*{SHARD_SUFFIX}"))
        from huggingface_hub import HfApi

        names = HfApi(token=self.token).list_repo_files(self.repo_id, repo_type="dataset")
        return sorted(n for n in names if Path(n).name.startswith(SHARD_PREFIX) and n.endswith(SHARD_SUFFIX))

    def _rows(self, name: str) -> list[str]:
        import datasets

        where = str(self.folder / name) if self.folder is not None else f"hf://datasets/{self.repo_id}/{name}"
        rows = datasets.load_dataset("text", data_files={"train": [where]}, split="train", keep_linebreaks=False,
                                     token=self.token)
        return rows["text"]

    def consumed(self, name: str, position: int) -> list[str]:
        """The lines before `position` (already read)."""
        return self._rows(name)[:position]

    def read(self, name: str, start: int) -> tuple[list[str], int, bool]:

        rows = self._rows(name)
        lines = rows[start:]
        # A data set row does not say whether its line was terminated: a last line that does not parse
        # is treated as torn (read again next time), any other bad line is skipped.
        torn = bool(lines) and _parse(lines[-1]) is None
        if torn:
            lines = lines[:-1]
        return lines, start + len(lines), torn


def _parse(text: str):
    try:
        record = json.loads(text)
    except (json.JSONDecodeError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def open_log_source(spec, token: str | None = None):
    """A folder of shards → `FolderLogSource`; `hf://datasets/ORG/NAME` or an `org/name` id → `DatasetLogSource`."""
    text = str(spec)
    if text.startswith("hf://datasets/"):
        return DatasetLogSource(repo_id=text[len("hf://datasets/"):].strip("/"), token=token)
    path = Path(text).expanduser()
    if path.exists():
        return FolderLogSource(path)
    from .router_store import is_hub_id

    if is_hub_id(text):
        return DatasetLogSource(repo_id=text, token=token)
    raise FileNotFoundError(f"The outcome log {text} does not exist (a --log-dir folder, or a Hub data set id).")


def _tokens(usage) -> float | None:
    value = usage.get("completion_tokens") if isinstance(usage, dict) else None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        return None
    return float(value)


class LabelReader:
    """
    Reads a log source incrementally and yields each label once.

    Args:
        source: a `FolderLogSource` or `DatasetLogSource`.
        candidates: the router's candidate names (labels for other models are counted, not returned).
        state: the position saved with the last revision (`LabelReader.state()`), or None to start at
            the beginning of the log.
        max_served: served records kept for joining (the oldest are forgotten beyond it).
        max_pending_seconds: how long feedback waits for its served record before it is dropped (counted).
    """

    def __init__(self, source, candidates, state: dict | None = None, max_served: int = 1_000_000,
                 max_pending_seconds: float = 86_400.0):
        state = state or {}
        if state.get("log_kind") not in (None, source.kind):
            raise ValueError(f"The store's position was kept for a {state['log_kind']} log, not a {source.kind}; "
                             "give the same kind of log as before, or a new store.")
        self.source = source
        self.candidates = set(candidates)
        self.position: dict[str, int] = {str(k): int(v) for k, v in (state.get("position") or {}).items()}
        self.pending: list[dict] = list(state.get("pending") or [])
        self.counts = {key: 0 for key in ("labels", "bad_lines", "without_prompt", "unknown_model", "not_answered",
                                          "orphans_dropped")}
        self.counts.update({k: int(v) for k, v in (state.get("counts") or {}).items() if k in self.counts})
        self.torn_lines = 0
        self.max_served = max_served
        self.max_pending_seconds = max_pending_seconds
        self._served: dict[str, dict] = {}
        self._scanned_before = False

    def state(self) -> dict:
        """The position to save with a revision (JSON)."""
        return {"log": str(self.source), "log_kind": self.source.kind, "position": dict(self.position),
                "pending": list(self.pending), "counts": dict(self.counts)}

    def _remember_served(self, record: dict) -> None:
        self._served[record["request_id"]] = {
            "prompt": record.get("prompt"), "model": record.get("model"), "answered": answered(record),
            "tokens": _tokens(record.get("usage")),
        }
        if len(self._served) > self.max_served:
            self._served.pop(next(iter(self._served)))

    def _scan_served_before_position(self) -> None:
        """After a restart: the served records before the position (feedback there was applied already)."""
        for name, end in self.position.items():
            for text in self.source.consumed(name, end):
                if f'"{SERVED}"' in text:
                    record = _parse(text)
                    if record and record.get("type") == SERVED and isinstance(record.get("request_id"), str):
                        self._remember_served(record)

    def read_new(self) -> list[Label]:
        """
        The labels added to the log since the last call (or the saved position), in label-time order,
        and advance the position past them. Nothing is applied here: save `state()` with the router
        the labels went into.
        """
        if not self._scanned_before:
            self._scan_served_before_position()
            self._scanned_before = True
        feedback = list(self.pending)
        torn = 0
        for name in self.source.files():
            start = self.position.get(name, 0)
            lines, end, waiting = self.source.read(name, start)
            torn += waiting
            for text in lines:
                if not text.strip():
                    continue
                record = _parse(text)
                if record is not None and record.get("type") == EXPLORED:
                    continue  # an exploration's audit trail: its labels are feedback records
                if record is None or not isinstance(record.get("request_id"), str) or record.get("type") not in (SERVED, FEEDBACK):
                    self.counts["bad_lines"] += 1
                    continue
                if record["type"] == SERVED:
                    self._remember_served(record)
                    continue
                score = record.get("score")
                if isinstance(score, bool) or not isinstance(score, (int, float)) or not 0 <= score <= 1:
                    self.counts["bad_lines"] += 1
                    continue
                feedback.append(record)
            self.position[name] = end
        self.torn_lines = torn
        labels, self.pending = self._join(feedback)
        labels.sort(key=lambda label: label.time)
        self.counts["labels"] += len(labels)
        return labels

    def _join(self, feedback: list[dict]) -> tuple[list[Label], list[dict]]:
        labels, waiting = [], []
        newest = max((float(f.get("time") or 0) for f in feedback), default=0.0)
        for record in feedback:
            served = self._served.get(record["request_id"])
            when = record.get("time")
            when = float(when) if isinstance(when, (int, float)) and math.isfinite(when) else 0.0
            if served is None:
                if newest - when > self.max_pending_seconds:
                    self.counts["orphans_dropped"] += 1
                else:
                    waiting.append(record)
                continue
            model = record.get("model") if isinstance(record.get("model"), str) else served["model"]
            if not served["answered"] and not isinstance(record.get("model"), str):
                self.counts["not_answered"] += 1
                continue
            if not isinstance(served["prompt"], str) or not served["prompt"].strip():
                self.counts["without_prompt"] += 1
                continue
            if model not in self.candidates:
                self.counts["unknown_model"] += 1
                continue
            tokens = _tokens(record.get("usage")) if isinstance(record.get("model"), str) else served["tokens"]
            source = record.get("source") if record.get("source") in SOURCES else "user"
            labels.append(Label(record["request_id"], served["prompt"], model, float(record["score"]), tokens, source, when))
        return labels, waiting


def apply_labels(router, labels: list[Label], batch_size: int = 4096) -> dict:
    """
    Apply `labels` to a kNN router with `remember()`, `batch_size` at a time (in order: a later label
    of the same cell wins). Returns `{"added", "filled"}`: new memory rows, and cells filled in rows
    the memory held.
    """
    added = filled = 0
    for start in range(0, len(labels), batch_size):
        chunk = labels[start : start + batch_size]
        result = router.remember([l.prompt for l in chunk], [l.model for l in chunk], [l.score for l in chunk],
                                 [l.output_tokens for l in chunk])
        added += result["added"]
        filled += result["filled"]
    return {"added": added, "filled": filled}

