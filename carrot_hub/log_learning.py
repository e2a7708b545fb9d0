"""`carrot learn LOGS --router ROUTER --out STORE --every 60s`: outcome logs → router revisions.

The one writer of a store. Each cycle it reads the labels added to the logs since its position
(`carrot_hub.label_reading`), applies them to the kNN router with `remember()` in batches (a
remembered prompt's cell is filled; a new prompt adds a row), and publishes a new revision with the
new position in its learning.json (`carrot_hub.router_store`). On start it resumes from the store's
current revision and the position saved in it, so a restart neither skips nor repeats a label; it
starts from `--router` only when the store holds nothing yet.

A second `carrot learn` on the same store refuses to start, naming the first. Killed at any point,
it leaves the store's current revision complete; the next run cleans up and publishes.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
import time

from .label_reading import LabelReader, apply_labels, open_log_source
from .router_store import FolderStore, StoreConflict, StoreLocked, open_store

logger = logging.getLogger(__name__)
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(text: str) -> float:
    """`"60s"`, `"10m"`, `"1h"`, `"500ms"` or a plain number of seconds → seconds (> 0)."""
    match = _DURATION.match(str(text))
    if not match or float(match.group(1)) <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive duration such as 60s, 10m or 1h, got {text!r}")
    return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]


class LogLearner:
    """
    Turns outcome logs into router revisions (see the module docstring).

    Args:
        logs: a log source (`open_log_source`).
        store: a `FolderStore` or `HubStore`.
        load_router: `load_router(path_or_id) -> CarrotRouter` (the CLI's loader, or `from_pretrained`).
        initial_router: the router to start from when the store is empty.
        owner: who holds the store's lock (shown to a second writer).
    """

    def __init__(self, logs, store, load_router, initial_router: str | None = None, owner: str = "carrot learn"):
        self.logs = logs
        self.store = store
        self._lock = store.lock(owner)  # first: a second writer stops here, before loading anything
        try:
            store.clean_temporary()
            revision = store.current()
            if revision is not None:
                self.router = load_router(str(store.path(revision)))
                state = store.read_state(revision)
                self.revision = revision
            elif initial_router is not None:
                self.router = load_router(initial_router)
                state = {}
                self.revision = None
            else:
                raise FileNotFoundError(f"The store {store} holds no router yet: give the router to start from (--router).")
            if getattr(self.router.config, "predictor_kind", None) != "knn":
                raise TypeError("carrot learn grows a kNN router's memory; this router predicts with MLP heads. "
                                "Start from a kNN router, or retrain from the log (carrot train --data LOG_DIR).")
            self.reader = LabelReader(logs, self.router.config.candidate_models, state.get("reader"))
            self.labels_applied = int(state.get("labels_applied", 0))
            self.grown_from = state.get("grown_from", initial_router)
        except BaseException:
            self._lock.release()
            raise

    def step(self) -> str | None:
        """Read new labels, apply them, publish a revision; returns its name (None: no new label)."""
        labels = self.reader.read_new()
        if not labels:
            return None
        started = time.perf_counter()
        applied = apply_labels(self.router, labels)
        self.labels_applied += len(labels)
        state = {
            "grown_from": self.grown_from,
            "previous_revision": self.revision,
            "labels_applied": self.labels_applied,
            "labels_in_revision": len(labels),
            "rows_added": applied["added"],
            "cells_filled": applied["filled"],
            "memory_size": self.router.config.knn_memory_size,
            "remembered_rows": self.router.config.knn_remembered_rows,
            "newest_label_time": max(label.time for label in labels),
            "published_at": time.time(),
            "reader": self.reader.state(),
        }
        self.revision = self.store.publish(self.router, state, parent=self.revision)
        logger.info("published %s: %d labels (%d new rows, %d cells filled) in %.2f s", self.revision, len(labels),
                    applied["added"], applied["filled"], time.perf_counter() - started)
        return self.revision

    def run(self, every_s: float, cycles: int | None = None, stop=None, report=None) -> None:
        """Step every `every_s` seconds, `cycles` times (None: until `stop()` is true or Ctrl-C)."""
        done = 0
        while cycles is None or done < cycles:
            started = time.monotonic()
            published = self.step()
            done += 1
            if report is not None:
                report(self, published)
            if (cycles is not None and done >= cycles) or (stop is not None and stop()):
                return
            time.sleep(max(0.0, every_s - (time.monotonic() - started)))

    def close(self) -> None:
        self._lock.release()


def add_learn_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Arguments of `carrot learn`."""
    parser.add_argument("logs", help="the outcome log: a --log-dir folder (sub-folders included), or a Hub data set "
                                     "of logs (org/name or hf://datasets/org/name, as --push-logs ships them)")
    parser.add_argument("--router", help="the kNN router to start from when the store is empty (folder or Hub id)")
    parser.add_argument("--out", required=True,
                        help="the store: a folder of revisions with a LATEST pointer, or a Hub model repo id")
    parser.add_argument("--every", type=parse_duration, default=60.0,
                        help="how often to read the logs and publish (default 60s; e.g. 30s, 10m)")
    parser.add_argument("--once", action="store_true", help="one cycle, then exit")
    parser.add_argument("--cycles", type=int, help="stop after this many cycles (default: run until stopped)")
    parser.add_argument("--keep", type=int, default=5, help="revisions kept in a folder store (default 5)")
    parser.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    return parser


def run_learn(args: argparse.Namespace) -> int:
    """`carrot learn`: see the module docstring."""
    from .cli_common import Failure, UsageError, load_router
    from .hub_checks import PublishError, redact

    if args.cycles is not None and args.cycles < 1:
        raise UsageError(f"--cycles must be at least 1, got {args.cycles}.")
    if args.keep < 1:
        raise UsageError(f"--keep must be at least 1, got {args.keep}.")
    try:
        logs = open_log_source(args.logs)
        store = open_store(args.out, keep=args.keep)
    except (FileNotFoundError, NotADirectoryError, ValueError) as error:
        raise UsageError(str(error)) from None
    try:
        learner = LogLearner(logs, store, lambda spec: load_router(spec, progress=False),
                             initial_router=args.router, owner=f"carrot learn {args.logs}")
    except StoreLocked as error:
        raise UsageError(str(error)) from None
    except (FileNotFoundError, TypeError, ValueError) as error:
        raise UsageError(redact(str(error))) from None
    where = "the Hub repo" if not isinstance(store, FolderStore) else "the folder"
    print(f"carrot learn: {logs} → {where} {store} (current revision {learner.revision or 'none yet'}), "
          f"every {args.every:g} s", file=sys.stderr, flush=True)

    def report(learner, published):
        reader = learner.reader
        if published:
            print(f"carrot learn: published {published} ({learner.labels_applied} labels in all; "
                  f"memory {learner.router.config.knn_memory_size} rows)", file=sys.stderr, flush=True)
        if reader.torn_lines or reader.counts["bad_lines"]:
            print(f"carrot learn: {reader.counts['bad_lines']} bad lines skipped, {reader.torn_lines} unfinished "
                  "last lines waiting", file=sys.stderr, flush=True)

    try:
        learner.run(args.every, cycles=1 if args.once else args.cycles, report=report)
    except KeyboardInterrupt:
        pass
    except StoreConflict as error:
        raise Failure(f"carrot learn stopped: {error}") from None
    except (OSError, PublishError) as error:
        raise Failure(f"carrot learn stopped: {redact(str(error))} (the store's current revision is unchanged)") from None
    finally:
        learner.close()
    return 0
