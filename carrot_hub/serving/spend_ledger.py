"""The day's exploration and serving spend, shared by every gateway process that writes one outcome log.

`--explore-budget` and `--explore-max-share` cap a UTC day's spend. Kept in one process's memory,
the caps would multiply under `--workers N` (each worker its own day) and start again from 0 at
every restart, so a gateway restarted five times a day could spend five budgets. Instead each
process writes its running totals to a small JSON file of its own under
`<log dir>/explore-spend/<YYYY-MM-DD>/`, and a cap is checked against the sum over every file of the
day: the other workers', and those of the processes that ran earlier that day.

A file holds one JSON object padded to `RECORD_BYTES`, rewritten in place (one `pwrite`, about
10 µs, where a write-and-rename costs milliseconds on the event loop) under an exclusive `flock`;
readers take a shared one, so nobody reads half a record.

Three sums per process:
- `explored`: US$ spent on explored answers and on the judge;
- `reserved`: the predicted cost of explorations started and not yet finished, so that concurrent
  explorations (in this process or another) cannot together pass a cap that each alone fits;
- `served`: the realised cost of served requests, the denominator of `--explore-max-share`.

Exploration's sums are written at every change (a few times per exploration). Serving's are
written at most once per `SERVED_FLUSH_S`: they only ever loosen the share cap, so a figure a
moment old errs on the safe side, and the hot path does not write a file per request. A ledger
without a folder (`folder=None`) keeps the same sums in memory only.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


logger = logging.getLogger("carrot_hub.serving.spend_ledger")
LEDGER_FOLDER = "explore-spend"
SERVED_FLUSH_S = 1.0
RECORD_BYTES = 256  # one JSON record, space-padded: pid and three floats take at most about 110
_FIELDS = ("explored", "reserved", "served")


def utc_day(now: datetime.datetime | None = None) -> str:
    return (now or datetime.datetime.now(datetime.timezone.utc)).strftime("%Y-%m-%d")


@dataclass
class DaySums:
    """US$ of one day: spent exploring, reserved by explorations in flight, and of served requests."""

    explored: float = 0.0
    reserved: float = 0.0
    served: float = 0.0

    def __add__(self, other: DaySums) -> DaySums:
        return DaySums(*(getattr(self, name) + getattr(other, name) for name in _FIELDS))


class SpendLedger:
    """
    This process's spend of the UTC day, plus (with a `folder`) every other process's of the same day.

    `folder`: the outcome log's folder (the ledger lives in its `explore-spend/`), or None for a
    ledger in memory only. `clock() -> "YYYY-MM-DD"` names the day (UTC by default); a new day starts
    every sum from 0.
    """

    def __init__(self, folder: str | os.PathLike | None = None, clock: Callable[[], str] = utc_day,
                 monotonic: Callable[[], float] = time.monotonic):
        self.root = None if folder is None else Path(folder) / LEDGER_FOLDER
        self._clock, self._monotonic = clock, monotonic
        self._name = f"{os.getpid()}-{time.time_ns()}.json"  # unique across restarts, even if a pid is reused
        self._day, self._own = clock(), DaySums()
        self._fd: int | None = None  # this process's file of the day, opened at its first write
        self._readers: dict[str, int] = {}  # the other files of the day, by name, open for reading
        self._last_flush, self._unflushed = float("-inf"), False

    # ------------------------------------------------------------------ adding

    def spend(self, dollars: float) -> None:
        """Exploration spent `dollars` (an explored answer or a judge call)."""
        self._change(explored=dollars)

    def reserve(self, dollars: float) -> None:
        """An exploration predicted to cost `dollars` starts; `release` the same amount when it ends."""
        self._change(reserved=dollars)

    def release(self, dollars: float) -> None:
        self._change(reserved=-dollars)

    def served(self, dollars: float) -> None:
        """A served request's realised cost (written with the next flush, at most once per SERVED_FLUSH_S)."""
        self._roll()
        self._own.served += dollars
        self._unflushed = True
        if self._monotonic() - self._last_flush >= SERVED_FLUSH_S:
            self.flush()

    def _change(self, **delta: float) -> None:
        self._roll()
        for name, dollars in delta.items():
            setattr(self._own, name, getattr(self._own, name) + dollars)
        if self._own.reserved < 1e-12:  # float sums of reserve/release may drift just below 0
            self._own.reserved = 0.0
        self._unflushed = True
        self.flush()

    # ------------------------------------------------------------------ reading

    def own(self) -> DaySums:
        """This process's sums of the day."""
        self._roll()
        return DaySums(self._own.explored, self._own.reserved, self._own.served)

    def today(self) -> DaySums:
        """The day's sums over every process writing this ledger (this one's own figures are always current)."""
        self._roll()
        total = self.own()
        for pid, sums in self._read_others():
            if sums.reserved and not _alive(pid):  # a process killed mid-exploration reserves nothing any more
                sums = DaySums(sums.explored, 0.0, sums.served)
            total = total + sums
        return total

    # ------------------------------------------------------------------ files

    def _day_folder(self) -> Path:
        return self.root / self._day

    def flush(self) -> None:
        """Write this process's sums of the day to its file (nothing without a folder or a change)."""
        if self.root is None or not self._unflushed:
            return
        self._last_flush, self._unflushed = self._monotonic(), False
        record = json.dumps({"pid": os.getpid(), **{name: getattr(self._own, name) for name in _FIELDS}})
        try:
            if self._fd is None:
                self._day_folder().mkdir(parents=True, exist_ok=True)
                self._fd = os.open(self._day_folder() / self._name, os.O_RDWR | os.O_CREAT, 0o644)
            with _locked(self._fd, fcntl.LOCK_EX):
                os.pwrite(self._fd, record.encode().ljust(RECORD_BYTES), 0)
        except OSError as error:  # a full disk: the caps still hold for this process; others see it late
            self._unflushed = True
            logger.warning("could not write the exploration spend ledger in %s: %s", self.root, error)

    def close(self) -> None:
        """Write what is left (the gateway's shutdown) and close the files."""
        self.flush()
        for fd in [self._fd, *self._readers.values()]:
            if fd is not None:
                os.close(fd)
        self._fd, self._readers = None, {}

    def _read_others(self) -> list[tuple[int | None, DaySums]]:
        """Every other process's `(pid, sums)` of the day (their files are kept open once seen)."""
        if self.root is None:
            return []
        try:
            names = os.listdir(self._day_folder())
        except FileNotFoundError:
            return []
        sums = []
        for name in names:
            if not name.endswith(".json") or name == self._name:
                continue
            if name not in self._readers:
                try:
                    self._readers[name] = os.open(self._day_folder() / name, os.O_RDONLY)
                except OSError:
                    continue
            sums.append(_read_sums(self._readers[name], name))
        return sums

    def _roll(self) -> None:
        """A new UTC day: this process's file of the old day is final, and every sum starts from 0."""
        today = self._clock()
        if today != self._day:
            self.close()
            self._day, self._own = today, DaySums()
            self._unflushed = False


@contextlib.contextmanager
def _locked(fd: int, operation: int):
    fcntl.flock(fd, operation)
    try:
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)


def _read_sums(fd: int, name: str) -> tuple[int | None, DaySums]:
    """One process's id and sums from its ledger file; an unreadable record counts as nothing (logged)."""
    try:
        with _locked(fd, fcntl.LOCK_SH):
            text = os.pread(fd, RECORD_BYTES, 0)
        if not text.strip():  # created, its first record not yet written
            return None, DaySums()
        data = json.loads(text)
        pid = data.get("pid")
        return (pid if isinstance(pid, int) else None,
                DaySums(*(max(float(data.get(name, 0.0)), 0.0) for name in _FIELDS)))
    except (OSError, ValueError, TypeError, AttributeError) as error:
        logger.warning("ignored the exploration spend ledger file %s: %s", name, error)
        return None, DaySums()


def _alive(pid: int | None) -> bool:
    """Whether process `pid` runs on this machine (unknown pids count as alive: their reservations stand)."""
    if pid is None:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process: alive
        return True
    return True
