"""The append-only record of a collection: every answer, failure and score, on disk as it arrives.

    STORE/
      store.json     what was asked (sampling options): a rerun with other options is refused
      cells.jsonl    one JSON object per line, never rewritten

Lines (`type`):
    {"type": "answer", "key", "model", "prompt_sha256", "text", "input_tokens", "output_tokens",
     "tokens_counted", "cost", "latency_s", "finish_reason", "time"}
    {"type": "failure", "key", "model", "prompt_sha256", "reason", "status", "attempts", "time"}
    {"type": "score", "key", "model", "scorer", "value", "reason", "judge_model", "judge_cost", "time"}

Each line is one `write()` of one whole line to an `O_APPEND` descriptor the moment its answer
arrives, so a run killed with SIGKILL loses only the calls still in flight (what was written is in
the operating system's hands). Lines are forced to disk (`fsync`) at most every `FSYNC_INTERVAL_S`
and when the store closes: a power cut loses at most the last fraction of a second (an fsync per
line costs ~6 ms here, which would cap a collection near 100 answers a second). A torn last line
(a write cut short) is dropped when the store is opened again. One process writes a store at a time (`flock`).
A cell counts as answered once it has an answer line; a failed cell is asked again by the next run;
the latest score line per (cell, scorer) wins.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

from ..errors import BadInputError
from .contracts import Completion, Score

CELLS_FILENAME = "cells.jsonl"
STORE_FILENAME = "store.json"
ANSWER, FAILURE, SCORE = "answer", "failure", "score"
FSYNC_INTERVAL_S = 0.1


class StoreError(BadInputError):
    """The store cannot be used for this run (other sampling options, another run holds it, not a store)."""


@dataclass(frozen=True)
class Failure:
    """A cell whose upstream failed every retry (or refused the request)."""

    reason: str
    status: int | None = None
    attempts: int = 1


def _jsonable(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class CellStore:
    """
    The store of one collection (see the module docstring). Open it with `CellStore.open(folder,
    sampling)`; read `answers`, `failures`, `scores`; append with `add_answer`, `add_failure`,
    `add_score`; `close()` releases it.
    """

    def __init__(self, folder: Path, sampling: dict):
        self.folder = folder
        self.sampling = sampling
        self.answers: dict[tuple[str, str], dict] = {}
        self.failures: dict[tuple[str, str], dict] = {}
        self.scores: dict[tuple[str, str, str], dict] = {}
        self.torn_lines = 0
        self._fd: int | None = None
        self._lock_fd: int | None = None
        self._synced = time.monotonic()
        self.fsync = True

    @classmethod
    def open(cls, folder: str | os.PathLike, sampling: Mapping, fsync: bool = True) -> CellStore:
        """
        Open (creating it if needed) the store in `folder` for a run asking with `sampling`
        (`{"temperature": ..., "max_tokens": ...}`). Refuses a store made with other sampling options,
        and one another live process is writing.
        """
        folder = Path(folder).expanduser()
        if folder.exists() and not folder.is_dir():
            raise StoreError(f"The collection store {folder} exists and is not a folder; choose another --store.")
        if folder.is_dir() and any(folder.iterdir()) and not (folder / STORE_FILENAME).is_file():
            raise StoreError(f"{folder} is not a carrot collect store (no {STORE_FILENAME}) and is not empty; "
                             "choose another --store.")
        folder.mkdir(parents=True, exist_ok=True)
        store = cls(folder, dict(sampling))
        store.fsync = fsync
        store._lock()
        try:
            store._check_sampling()
            store._load()
            store._fd = os.open(folder / CELLS_FILENAME, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        except BaseException:
            store.close()
            raise
        return store

    def _lock(self) -> None:
        self._lock_fd = os.open(self.folder, os.O_RDONLY)  # flock on the folder itself: always the same inode
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StoreError(f"Another carrot collect is writing to {self.folder}; wait for it to end "
                             "(or stop it), then run again.") from None

    def _check_sampling(self) -> None:
        path = self.folder / STORE_FILENAME
        if path.is_file():
            try:
                recorded = json.loads(path.read_text(encoding="utf-8")).get("sampling", {})
            except (json.JSONDecodeError, AttributeError):
                raise StoreError(f"{path} is not valid JSON; the store is damaged (move it away to start over).") from None
            if recorded != self.sampling:
                raise StoreError(
                    f"The store {self.folder} holds answers asked with {recorded}, this run asks with {self.sampling}: "
                    "pass the same --temperature/--max-tokens to continue it, or collect into another table."
                )
        else:
            temporary = path.with_name(f".{STORE_FILENAME}.{os.getpid()}.tmp")
            temporary.write_text(json.dumps({"format": 1, "sampling": self.sampling,
                                             "created": time.time()}, indent=2) + "\n", encoding="utf-8")
            os.replace(temporary, path)

    def _load(self) -> None:
        path = self.folder / CELLS_FILENAME
        if not path.is_file():
            return
        data = path.read_bytes()
        end = data.rfind(b"\n") + 1
        if end < len(data):  # a line cut short by a kill: drop it so that the next line starts clean
            self.torn_lines += 1
            with open(path, "r+b") as handle:
                handle.truncate(end)
        for raw in data[:end].splitlines():
            if not raw.strip():
                continue
            try:
                record = json.loads(raw)
            except json.JSONDecodeError:
                self.torn_lines += 1
                continue
            self._apply(record)

    def _apply(self, record: dict) -> None:
        kind, key, model = record.get("type"), record.get("key"), record.get("model")
        if not isinstance(key, str) or not isinstance(model, str):
            return
        if kind == ANSWER:
            self.answers[(key, model)] = record
            self.failures.pop((key, model), None)
        elif kind == FAILURE:
            if (key, model) not in self.answers:
                self.failures[(key, model)] = record
        elif kind == SCORE and isinstance(record.get("scorer"), str):
            self.scores[(key, model, record["scorer"])] = record

    def _append(self, record: dict) -> None:
        if self._fd is None:
            raise RuntimeError(f"The store {self.folder} is closed.")
        record = {name: _jsonable(value) for name, value in record.items()}
        record.setdefault("time", time.time())
        data = (json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]
        if self.fsync and time.monotonic() - self._synced >= FSYNC_INTERVAL_S:
            os.fsync(self._fd)
            self._synced = time.monotonic()
        self._apply(record)

    def add_answer(self, key: str, prompt_sha256: str, completion: Completion) -> dict:
        record = {"type": ANSWER, "key": key, "prompt_sha256": prompt_sha256, **asdict(completion)}
        self._append(record)
        return record

    def add_failure(self, key: str, model: str, prompt_sha256: str, failure: Failure) -> None:
        self._append({"type": FAILURE, "key": key, "model": model, "prompt_sha256": prompt_sha256, **asdict(failure)})

    def add_score(self, key: str, model: str, score: Score) -> None:
        self._append({"type": SCORE, "key": key, "model": model, "scorer": score.scorer, "value": score.value,
                      "reason": score.reason, "judge_model": score.judge_model, "judge_cost": score.judge_cost})

    def answer(self, key: str, model: str) -> dict | None:
        return self.answers.get((key, model))

    def score(self, key: str, model: str, scorer: str) -> dict | None:
        return self.scores.get((key, model, scorer))

    def close(self) -> None:
        if self._fd is not None:
            if self.fsync:
                os.fsync(self._fd)
            os.close(self._fd)
            self._fd = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None

    def __enter__(self) -> CellStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
