"""The outcome log: what a gateway served, and the labels its users give back, as local JSONL shards.

Layout (read back by `carrot_hub.data.outcome_log_reader`, hence by `load_routing_table`, `read_routing_logs`
and `carrot train`):

    LOG_DIR/
      prices.json                                   the router's price table (when the gateway gives it)
      outcomes-20261128T090000Z-4242-a1b2c3-000000.jsonl   one shard per writer process and rotation
      outcomes-20261128T100000Z-4242-a1b2c3-000001.jsonl

Every served request appends one `{"type": "served", ...}` line; `feedback()` appends one
`{"type": "feedback", "request_id", "score", "time", "source"}` line (`source` "user" for
`POST /v1/feedback`, "judge" for judged exploration, whose label of an explored candidate also
names its `model` and `usage`); `explored()` appends an exploration's audit record. Nothing is rewritten: labels are joined to
their requests when the log is read (the latest label of a request wins).

Concurrency: each `OutcomeLog` writes its own shard (file names carry the process id and a random
token, and are created with `O_EXCL`), so worker processes never share a file; within a process a lock
serialises writers, and each record is one `write()` of one whole line to an `O_APPEND` descriptor. A
reader never sees half a record: an unterminated last line is left out until it is complete.

Failures: a write that fails (a full disk: ENOSPC, EFBIG) is cut back to the last whole line
(`ftruncate`), so no half record is ever left to fuse with the next one; the error is raised to the
caller and kept in `health()` until a later write succeeds. A shard deleted or replaced while open
is noticed before the next write (its inode is compared with the path's) and a new shard is opened,
so later records are not written into a file nobody can see.

Durability (`fsync`): `"rotate"` (default) hands each line to the operating system at once (a crash
of the gateway process loses nothing) and forces shards to disk when they are rotated or closed (a
power cut can lose the records of the open shard still in the OS cache); `"always"` forces every
line to disk (slower: one disk flush per request); `"never"` leaves flushing to the OS.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import math
import os
import re
import secrets
import threading
import time
from collections import deque
from collections.abc import Mapping
from pathlib import Path

from carrot_hub.data.outcome_log_reader import (
    EXPLORED,
    FEEDBACK,
    SERVED,
    SHARD_PREFIX,
    SHARD_SUFFIX,
    answered,
    parse_line,
    read_shard_lines,
    shard_paths,
)
from carrot_hub.data.prices import PRICES_FILENAME, validate_prices

FSYNC_POLICIES = ("rotate", "always", "never")
DEFAULT_FEEDBACK_WINDOW = 100_000
# `log_answers`: an answer is kept up to this many characters (about 8,000 tokens; a served line stays
# well under a shard's size, and a reader holding a log's records holds at most this much per answer).
MAX_ANSWER_CHARS = 32_768
logger = logging.getLogger(__name__)
# The one call that writes records (a seam for tests that simulate a full disk).
_write = os.write


class UnknownRequestError(KeyError):
    """Feedback names a request id that the outcome log has no served record of."""

    def __init__(self, request_id, folder):
        self.request_id = request_id
        super().__init__(request_id)
        self.message = (
            f"No served request with id {request_id!r} in the outcome log {folder}: send the id from the "
            "x-carrot-request-id header of a response this gateway gave."
        )

    def __str__(self) -> str:  # KeyError would print the repr of its argument only
        return self.message


def check_score(score) -> float:
    """A feedback score as a float, or `ValueError` if it is not a number in [0, 1]."""
    if isinstance(score, bool) or not isinstance(score, (int, float)):
        raise ValueError(f"score must be a number in [0, 1] (e.g. 1 for a good answer, 0 for a bad one), got {score!r}.")
    score = float(score)
    if not (0.0 <= score <= 1.0):  # also rejects NaN
        raise ValueError(f"score must be in [0, 1] (e.g. 1 for a good answer, 0 for a bad one), got {score!r}.")
    return score


def _keep_answer(line: dict, log_answers: bool) -> None:
    """A served line's `answer`: dropped unless answers are logged, else cut to `MAX_ANSWER_CHARS`."""
    if not log_answers:
        line.pop("answer", None)
        line.pop("answer_truncated", None)
        return
    answer = line.get("answer")
    if isinstance(answer, str) and len(answer) > MAX_ANSWER_CHARS:
        line["answer"], line["answer_truncated"] = answer[:MAX_ANSWER_CHARS], True


def _jsonable(value):
    """Plain JSON values: tensors and numpy scalars via `.tolist()`, non-finite floats as null."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (str, int, bool)) or value is None:
        return value
    if isinstance(value, Mapping):
        return {str(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    if hasattr(value, "tolist"):
        return _jsonable(value.tolist())
    return str(value)


class _ServedIndex:
    """
    request id → (shard, byte offset) of its served record, for feedback, over every shard in the
    folder (other processes' too: feedback may reach another worker than the one that served).

    Bounded: it holds the `capacity` most recently indexed requests (140 to 190 bytes each: a
    gateway id is kept as one 128-bit integer, its place as one integer) and forgets the oldest.
    This process's own records are added as they are written, so looking one up reads no shard;
    other shards (other workers', earlier runs') are read incrementally, from where the last refresh
    stopped, by whoever looks up an id not held, outside the lock the writer takes (a refresh never
    holds up the records being written).
    """

    def __init__(self, folder: Path, capacity: int):
        self.folder = folder
        self.capacity = capacity
        self.positions: dict[Path, int] = {}  # shard → bytes already indexed (own shards: all, as written)
        self.shards: list[Path] = []  # shard number → path
        self._numbers: dict[Path, int] = {}
        self.where: dict[int | str, int] = {}  # key → shard number << OFFSET_BITS | byte offset
        self._order: deque = deque()  # keys, oldest first (a dict cannot drop its oldest entry in O(1))
        self._lock = threading.Lock()  # held briefly, by the writer too
        self._refreshing = threading.Lock()  # one refresh at a time

    def written(self, path: Path, offset: int, end: int, request_id: str | None) -> None:
        """This process wrote a line at `offset` of `path` (ending at `end`): a served record's place is kept."""
        with self._lock:
            if request_id is not None:
                self._add(request_id, path, offset)
            self.positions[path] = max(end, self.positions.get(path, 0))

    def _add(self, request_id: str, path: Path, offset: int) -> None:
        key = _index_key(request_id)
        if key not in self.where:
            self._order.append(key)
        number = self._numbers.get(path)
        if number is None:
            number = self._numbers[path] = len(self.shards)
            self.shards.append(path)
        self.where[key] = number << OFFSET_BITS | offset
        while len(self._order) > self.capacity:
            self.where.pop(self._order.popleft(), None)

    def refresh(self) -> None:
        """Index the served records written to the folder's shards since the last refresh."""
        with self._refreshing:
            with self._lock:
                positions = dict(self.positions)
            found, ends = [], {}
            for path in shard_paths(self.folder):
                start = positions.get(path, 0)
                try:
                    if path.stat().st_size <= start:
                        continue
                    lines, ends[path] = read_shard_lines(path, start)
                except FileNotFoundError:  # removed meanwhile
                    continue
                for offset, _, text in lines:
                    if text is None or f'"{SERVED}"' not in text:
                        continue
                    try:
                        record = parse_line(text)
                    except ValueError:
                        continue
                    if isinstance(record, dict) and record.get("type") == SERVED and isinstance(record.get("request_id"), str):
                        found.append((record["request_id"], path, offset))
            with self._lock:
                for request_id, path, offset in found:
                    self._add(request_id, path, offset)
                for path, end in ends.items():
                    self.positions[path] = max(end, self.positions.get(path, 0))

    def _place(self, request_id: str) -> tuple[Path, int] | None:
        with self._lock:
            found = self.where.get(_index_key(request_id))
            return None if found is None else (self.shards[found >> OFFSET_BITS], found & OFFSET_MASK)

    def lookup(self, request_id: str) -> dict | None:
        """The served record of `request_id` as logged, or None (unknown, forgotten, or its shard removed)."""
        place = self._place(request_id)
        if place is None:
            self.refresh()
            place = self._place(request_id)
        if place is None:
            return None
        path, offset = place
        try:
            with path.open("rb") as handle:
                handle.seek(offset)
                record = parse_line(handle.readline().decode("utf-8"))
        except (FileNotFoundError, ValueError):  # removed meanwhile; UnicodeDecodeError is a ValueError
            return None
        return record if isinstance(record, dict) and record.get("request_id") == request_id else None


OFFSET_BITS = 40  # byte offsets within a shard up to 1 TiB
OFFSET_MASK = (1 << OFFSET_BITS) - 1
_GATEWAY_ID = re.compile(r"carrot-([0-9a-f]{32})")


def _index_key(request_id: str) -> int | str:
    """A gateway id (`carrot-` + 32 hex digits) as one integer (44 bytes instead of 88); others as they are."""
    match = _GATEWAY_ID.fullmatch(request_id)
    return int(match.group(1), 16) if match else request_id


class OutcomeLog:
    """
    Append-only log of served requests and their feedback, as rotating JSONL shards in `folder`.

    Args:
        folder: the log folder (created if needed). Several processes may share it.
        log_prompts: keep the routed text (the default: it is what makes the log routing data); when
            False only its SHA-256 is written (`prompt_sha256`), and the log can count and price the
            traffic but not train on it.
        log_answers: also keep the answering model's text (`answer`, cut to `MAX_ANSWER_CHARS`
            characters, `answer_truncated` true when cut) so the log can be judged later (`carrot logs
            judge`). Never for a log that does not keep prompts: an answer says as much as its prompt.
        max_shard_bytes: start a new shard once the current one reaches this size.
        max_shard_seconds: start a new shard once the current one is this old (None: no time limit).
        fsync: `"rotate"`, `"always"` or `"never"` (see the module docstring).
        prices: the router's price table `{model: {"input": $/M, "output": $/M}}`, written to
            `prices.json` so that the log loads as routing data with its costs.
        prices_recorded_on: the date of that price table.
        feedback_window: how many of the most recent served requests feedback can reach (the index
            that finds them is bounded to this many, at most about 190 bytes each; older ones get
            `UnknownRequestError`). Requests served by other processes count once they are read.
    """

    def __init__(
        self,
        folder,
        log_prompts: bool = True,
        log_answers: bool = False,
        max_shard_bytes: int = 64 * 2**20,
        max_shard_seconds: float | None = 3600.0,
        fsync: str = "rotate",
        prices: Mapping | None = None,
        prices_recorded_on: str | None = None,
        feedback_window: int = DEFAULT_FEEDBACK_WINDOW,
    ):
        if fsync not in FSYNC_POLICIES:
            raise ValueError(f"fsync must be one of {FSYNC_POLICIES}, got {fsync!r}.")
        if not isinstance(max_shard_bytes, int) or max_shard_bytes < 1:
            raise ValueError(f"max_shard_bytes must be a positive integer, got {max_shard_bytes!r}.")
        if isinstance(feedback_window, bool) or not isinstance(feedback_window, int) or feedback_window < 1:
            raise ValueError(f"feedback_window must be a positive number of requests, got {feedback_window!r}.")
        if max_shard_seconds is not None and not (max_shard_seconds > 0):
            raise ValueError(f"max_shard_seconds must be positive or None, got {max_shard_seconds!r}.")
        self.folder = Path(folder).expanduser()
        if self.folder.exists() and not self.folder.is_dir():
            raise NotADirectoryError(f"The outcome log {self.folder} exists and is not a folder; choose another --log-dir.")
        self.folder.mkdir(parents=True, exist_ok=True)
        self.log_prompts = bool(log_prompts)
        self.log_answers = bool(log_answers) and self.log_prompts
        self.max_shard_bytes = max_shard_bytes
        self.max_shard_seconds = max_shard_seconds
        self.fsync = fsync
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._pid = os.getpid()
        self._token = secrets.token_hex(3)
        self._sequence = 0
        self._shard: Path | None = None
        self._shard_bytes = 0
        self._shard_opened = 0.0
        self._closed = False
        self._index = _ServedIndex(self.folder, feedback_window)
        self.write_errors = 0  # failed appends since start
        self.reopened = 0  # shards found deleted or replaced while open
        self._last_error: str | None = None  # the latest failed append's error, until one succeeds
        if prices is not None:
            self._write_prices(validate_prices(prices), prices_recorded_on)

    # ------------------------------------------------------------------------------- writing

    @property
    def shard(self) -> Path | None:
        """The shard this process writes to now (None before the first record)."""
        return self._shard

    def record(self, record: Mapping) -> None:
        """
        Append one served request. `record` holds at least `request_id` (str) and `model` (the chosen
        candidate, or None when no upstream answered); `time` defaults to now. The gateway also gives
        `prompt`, `mu`, `predicted_quality`, `predicted_output_tokens`, `predicted_cost`, `usage`
        (`prompt_tokens`, `completion_tokens`), `realised_cost`, `latency_s`, `ttfb_s`, `fallbacks`,
        `status` ("ok" when the answer reached the client), `route_on`, and what the router knew of the
        prompt: `support`, `in_distribution`, `ood_policy`, `ood_applied`; with `log_answers`, the
        answer's text (`answer`) and whether the request was plain chat (`plain_chat`: no tools or
        response format, an answer a judge can grade as text). Feedback can only find a
        request once its record is written: record it before the response's last byte leaves.
        """
        if not isinstance(record, Mapping):
            raise TypeError(f"record must be a mapping, got {type(record).__name__}.")
        request_id = record.get("request_id")
        if not isinstance(request_id, str) or not request_id:
            raise ValueError(f"record needs a non-empty string request_id, got {request_id!r}.")
        model = record.get("model")
        if model is not None and not isinstance(model, str):
            raise ValueError(f"record's model must be a candidate name or None, got {model!r}.")
        line = {"type": SERVED, **_jsonable(dict(record))}
        line["type"] = SERVED
        line.setdefault("time", time.time())
        if not self.log_prompts and "prompt" in line:
            prompt = line.pop("prompt")
            if isinstance(prompt, str):
                line["prompt_sha256"] = hashlib.sha256(prompt.encode("utf-8")).hexdigest()
        _keep_answer(line, self.log_answers)
        self._append(line, served_id=request_id)

    def feedback(self, request_id: str, score: float, source: str = "user", model: str | None = None,
                 usage: dict | None = None) -> dict:
        """
        Attach a quality label in [0, 1] to a served request: appends a feedback record and returns
        the served record it labels (as logged; with `prompt` unless prompts are not logged).
        `source`: "user" or "judge". `model`/`usage` (judge labels only): the label scores another
        candidate's answer to the same request (one the gateway explored), with that answer's usage.

        Raises:
            ValueError: `score` is not a number in [0, 1], or the request was not answered.
            UnknownRequestError (a `KeyError`): no served record has this id (in any shard of the folder).
        """
        score = check_score(score)
        if not isinstance(request_id, str) or not request_id:
            raise ValueError(f"request_id must be a non-empty string, got {request_id!r}.")
        served = self._index.lookup(request_id)  # not under the write lock: serving goes on meanwhile
        if served is None:
            raise UnknownRequestError(request_id, self.folder)
        if not answered(served) or served.get("model") is None:
            raise ValueError(
                f"Request {request_id!r} was not answered (status {served.get('status')!r}): there is no answer to score."
            )
        if source not in ("user", "judge"):
            raise ValueError(f"source must be 'user' or 'judge', got {source!r}.")
        line = {"type": FEEDBACK, "request_id": request_id, "score": score, "time": time.time(), "source": source}
        if model is not None:
            line["model"] = model
            if usage is not None:
                line["usage"] = _jsonable(dict(usage))
        self._append(line)
        return served

    def explored(self, record: Mapping) -> None:
        """Append the audit record of one exploration (`request_id`, what was asked, its labels and cost)."""
        line = {**_jsonable(dict(record)), "type": EXPLORED}
        line.setdefault("time", time.time())
        self._append(line)

    def _append(self, line: dict, served_id: str | None = None) -> None:
        """Write one line; a served record's place (`served_id`) goes into the feedback index as written."""
        data = (json.dumps(line, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")
        with self._lock:
            if self._closed:
                raise RuntimeError(f"The outcome log {self.folder} is closed; nothing more can be written.")
            if os.getpid() != self._pid:  # a forked child: never write to the parent's shard
                self._pid, self._fd, self._shard, self._token = os.getpid(), None, None, secrets.token_hex(3)
            try:
                if self._fd is not None and not self._shard_in_place():
                    self._reopen_removed_shard()
                if self._fd is not None and self._should_rotate(len(data)):
                    self._close_shard()
                if self._fd is None:
                    self._open_shard()
                offset = self._write_line(data)
            except OSError as error:
                self.write_errors += 1
                self._last_error = f"{errno.errorcode.get(error.errno, 'OSError')}: {error.strerror or error}"
                raise
            self._last_error = None
            self._index.written(self._shard, offset, offset + len(data), served_id)

    def _write_line(self, data: bytes) -> int:
        """Append one whole line, or nothing (on failure the shard is cut back); returns its byte offset."""
        before = os.fstat(self._fd).st_size
        try:
            view = memoryview(data)
            while view:  # a regular-file write is whole in practice; loop in case it is not
                written = _write(self._fd, view)
                view = view[written:]
            if self.fsync == "always":
                os.fsync(self._fd)
        except OSError:
            try:
                os.ftruncate(self._fd, before)
            except OSError:  # cannot cut back: leave the torn line last in a shard nobody appends to again
                self._abandon_shard()
            raise
        self._shard_bytes += len(data)
        return before

    def _shard_in_place(self) -> bool:
        """Whether the open descriptor is still the file at the shard's path (not deleted, not replaced)."""
        try:
            on_disk = os.stat(self._shard)
        except FileNotFoundError:
            return False
        held = os.fstat(self._fd)
        return (held.st_dev, held.st_ino) == (on_disk.st_dev, on_disk.st_ino)

    def _reopen_removed_shard(self) -> None:
        logger.warning("The outcome-log shard %s was deleted or replaced while open; writing to a new shard.",
                       self._shard.name)
        self.reopened += 1
        self._abandon_shard()

    def _abandon_shard(self) -> None:
        """Close the open shard without forcing it to disk; the next append opens a new one."""
        fd, self._fd = self._fd, None
        with contextlib.suppress(OSError):
            os.close(fd)

    def health(self) -> dict:
        """`{"status": "ok" | "failing", "write_errors", "reopened_shards", "last_error"}`: failing while
        the latest append failed (until one succeeds)."""
        return {"status": "failing" if self._last_error else "ok", "write_errors": self.write_errors,
                "reopened_shards": self.reopened, "last_error": self._last_error}

    @property
    def failing(self) -> bool:
        """Whether the latest append failed."""
        return self._last_error is not None

    def _should_rotate(self, incoming: int) -> bool:
        if self._shard_bytes and self._shard_bytes + incoming > self.max_shard_bytes:
            return True
        return self.max_shard_seconds is not None and time.time() - self._shard_opened >= self.max_shard_seconds

    def _open_shard(self) -> None:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        while True:
            name = f"{SHARD_PREFIX}{stamp}-{self._pid}-{self._token}-{self._sequence:06d}{SHARD_SUFFIX}"
            self._sequence += 1
            try:
                self._fd = os.open(self.folder / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
                break
            except FileExistsError:
                continue
        self._shard, self._shard_bytes, self._shard_opened = self.folder / name, 0, time.time()

    def _close_shard(self) -> None:
        if self._fd is None:
            return
        if self.fsync != "never":
            os.fsync(self._fd)
        os.close(self._fd)
        self._fd = None

    def _write_prices(self, prices: dict, recorded_on: str | None) -> None:
        """prices.json, replaced atomically (concurrent workers write the same table)."""
        document = {"recorded_on": recorded_on, "source": "the router served by carrot serve", "prices": prices}
        target = self.folder / PRICES_FILENAME
        temporary = self.folder / f".{PRICES_FILENAME}.{os.getpid()}.{secrets.token_hex(3)}.tmp"
        temporary.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
        os.replace(temporary, target)

    def close(self) -> None:
        """Force the open shard to disk (unless `fsync="never"`) and close it. Idempotent."""
        with self._lock:
            if os.getpid() == self._pid:
                self._close_shard()
            self._closed = True

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
