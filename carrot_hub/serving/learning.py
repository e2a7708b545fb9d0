"""`carrot serve --learn`: feedback grows the served kNN router's memory as it arrives.

Each label (`POST /v1/feedback`) becomes one remembered row (`CarrotRouter.remember`): the served
prompt, the model that answered, the score, and the output tokens the upstream reported. Routing goes
on meanwhile (the memory is swapped whole under a lock). The grown router is saved every `every`
labels and on shutdown, each time into a NEW folder under `save_dir`, written as a temporary folder
and renamed into place; the folder the router was loaded from is never written to.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
from collections import OrderedDict
from pathlib import Path

from .outcome_log import check_score

logger = logging.getLogger(__name__)

LATEST_FILENAME = "LATEST"
SNAPSHOT_PREFIX = "router-"
# Request ids already learned, kept to ignore a second label for the same request (bounded).
MAX_LEARNED_IDS = 1_000_000


class OnlineLearner:
    """
    Applies feedback to a kNN router and saves the grown router.

    Args:
        router: the `CarrotRouter` being served (kNN; an MLP router is refused).
        save_dir: folder for the grown routers: each save is `save_dir/router-<UTC time>-<labels>labels/`,
            and `save_dir/LATEST` names the newest. Created if needed; must not be a router folder.
        every: save after every `every` labels learned (0: only on `close()`).
        keep: how many of this learner's snapshots to keep (older ones it wrote are removed; None: all).
            Each holds the whole router (encoder included).
        max_batch: the most queued labels encoded in one batch.

    A request labelled twice is learned once (its first label; the outcome log keeps every label and
    its loader uses the latest). Feedback whose served record has no prompt (`--no-prompt-log`) or
    names a model the router does not know is counted in `stats` and not learned.
    """

    def __init__(self, router, save_dir, every: int = 500, keep: int | None = 3, max_batch: int = 64):
        if getattr(router.config, "predictor_kind", None) != "knn":
            raise TypeError(
                "--learn grows a kNN router's memory; this router predicts with MLP heads. Serve a kNN router, "
                "or retrain from the outcome log (carrot train --data LOG_DIR)."
            )
        if isinstance(every, bool) or not isinstance(every, int) or every < 0:
            raise ValueError(f"every must be a number of labels ≥ 0 (0: save only on shutdown), got {every!r}.")
        if keep is not None and (isinstance(keep, bool) or not isinstance(keep, int) or keep < 1):
            raise ValueError(f"keep must be a positive number of snapshots or None, got {keep!r}.")
        self.router = router
        self.save_dir = Path(save_dir).expanduser()
        if self.save_dir.exists() and not self.save_dir.is_dir():
            raise NotADirectoryError(f"{self.save_dir} exists and is not a folder; choose another folder for the grown routers.")
        if (self.save_dir / "config.json").exists():
            raise ValueError(
                f"{self.save_dir} holds a router (config.json); grown routers are saved as new folders inside "
                "save_dir, so give a separate folder."
            )
        source = str(getattr(router, "name_or_path", "") or "")
        if source and Path(source).exists() and Path(source).resolve() == self.save_dir.resolve():
            raise ValueError(f"save_dir {self.save_dir} is the folder the router was loaded from; give a separate folder.")
        self.source = source or None
        self.every = every
        self.keep = keep
        self.stats = {"learned": 0, "repeated": 0, "without_prompt": 0, "unknown_model": 0, "saves": 0}
        self.saved: list[Path] = []
        self._learned_ids: OrderedDict[str, None] = OrderedDict()
        self.max_batch = max_batch
        self._pending: list[tuple] = []
        self._unsaved = 0
        self._lock = threading.Lock()  # stats, queue, saves
        self._apply_lock = threading.Lock()  # one thread grows the memory at a time
        self._closed = False

    def on_feedback(self, request_id: str, score: float, record: dict) -> None:
        """
        Learn one label: `record` is the served record it labels (as `OutcomeLog.feedback` returns it),
        whose `prompt`, `model` and `usage.completion_tokens` are used.

        Labels are applied at once when no other thread is applying; labels that arrive meanwhile
        are queued and applied together by that thread in one encoder batch (so concurrent feedback
        costs one batched encoding, not one per label). When this returns, the label has been
        applied, by this thread or by the one already applying.
        """
        score = check_score(score)
        prompt, model = record.get("prompt"), record.get("model")
        usage = record.get("usage") if isinstance(record.get("usage"), dict) else {}
        tokens = usage.get("completion_tokens")
        if isinstance(tokens, bool) or not isinstance(tokens, (int, float)) or tokens < 0:
            tokens = None
        with self._lock:
            if self._closed:
                raise RuntimeError("This learner is closed; no more feedback can be learned.")
            if request_id in self._learned_ids:
                self.stats["repeated"] += 1
                return
            if not isinstance(prompt, str) or not prompt.strip():
                self.stats["without_prompt"] += 1
                if self.stats["without_prompt"] == 1:
                    logger.warning("Feedback for a request whose prompt was not logged (--no-prompt-log) is not learned.")
                return
            if model not in self.router.config.candidate_models:
                self.stats["unknown_model"] += 1
                return
            self._learned_ids[request_id] = None
            if len(self._learned_ids) > MAX_LEARNED_IDS:
                self._learned_ids.popitem(last=False)
            self._pending.append((prompt, model, score, tokens))
        self._apply_pending()

    def _apply_pending(self) -> None:
        # Group commit: whoever holds the apply lock drains the queue; the others return at once.
        # Re-checking the queue after releasing closes the gap where a label arrives just as the
        # draining thread finds the queue empty.
        while True:
            if not self._apply_lock.acquire(blocking=False):
                with self._apply_lock:  # wait for the drainer, which applies our label too
                    pass
                with self._lock:
                    if not self._pending:
                        return
                continue
            try:
                while True:
                    with self._lock:
                        batch, self._pending = self._pending[: self.max_batch], self._pending[self.max_batch :]
                    if not batch:
                        break
                    prompts, models, scores, tokens = (list(column) for column in zip(*batch))
                    self.router.remember(prompts, models, scores, tokens)
                    with self._lock:
                        self.stats["learned"] += len(batch)
                    self._unsaved += len(batch)
                    if self.every and self._unsaved >= self.every:
                        self._save()  # under the apply lock only: feedback keeps queueing meanwhile
            finally:
                self._apply_lock.release()
            with self._lock:
                if not self._pending:
                    return

    def save(self) -> Path | None:
        """Save the grown router now (None when nothing was learned since the last save)."""
        with self._apply_lock:
            return self._save()

    def _save(self) -> Path | None:
        """Write a snapshot; the caller holds the apply lock (the memory does not change meanwhile)."""
        if self._unsaved == 0:
            return None
        self.save_dir.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        name = f"{SNAPSHOT_PREFIX}{stamp}-{self.stats['learned']}labels"
        target = self.save_dir / name
        suffix = 1
        while target.exists():
            suffix += 1
            target = self.save_dir / f"{name}-{suffix}"
        temporary = self.save_dir / f".{target.name}.{os.getpid()}.tmp"
        try:
            self.router.save_pretrained(temporary)
            self._write_card(temporary)
            note = {
                "grown_from": self.source,
                "labels_learned": self.stats["learned"],
                "memory_size": self.router.config.knn_memory_size,
                "remembered_rows": self.router.config.knn_remembered_rows,
                "saved_at": time.time(),
            }
            (temporary / "learning.json").write_text(json.dumps(note, indent=2) + "\n", encoding="utf-8")
            os.rename(temporary, target)  # a folder appears whole or not at all
        finally:
            if temporary.exists():
                shutil.rmtree(temporary, ignore_errors=True)
        latest = self.save_dir / f".{LATEST_FILENAME}.{os.getpid()}.tmp"
        latest.write_text(target.name + "\n", encoding="utf-8")
        os.replace(latest, self.save_dir / LATEST_FILENAME)
        self.saved.append(target)
        self.stats["saves"] += 1
        self._unsaved = 0
        while self.keep is not None and len(self.saved) > self.keep:
            shutil.rmtree(self.saved.pop(0), ignore_errors=True)
        logger.info("Saved the grown router (%d labels learned) to %s", self.stats["learned"], target)
        return target

    def _write_card(self, folder: Path) -> None:
        try:
            from model_card.build import build_model_card
        except ImportError:  # the card builder ships with the package; a trimmed install saves without it
            return
        (folder / "README.md").write_text(build_model_card(self.router), encoding="utf-8")

    def close(self) -> Path | None:
        """Save what was learned since the last save and stop learning; returns the last folder saved."""
        with self._lock:
            already, self._closed = self._closed, True
        if not already:
            self._apply_pending()  # what was queued before closing is learned
        with self._apply_lock:
            if not already:
                self._save()
            return self.saved[-1] if self.saved else None


def latest_snapshot(save_dir) -> Path | None:
    """The newest grown router saved under `save_dir` (from its LATEST file), or None."""
    save_dir = Path(save_dir)
    pointer = save_dir / LATEST_FILENAME
    if not pointer.is_file():
        return None
    folder = save_dir / pointer.read_text(encoding="utf-8").strip()
    return folder if folder.is_dir() else None
