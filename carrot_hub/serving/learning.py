"""`carrot serve --learn`: feedback grows the served kNN router's memory as it arrives.

Each label (`POST /v1/feedback`) is applied with `CarrotRouter.remember` (the served prompt, the
model that answered, the score, and the output tokens the upstream reported): a prompt the memory
already holds gets its cell filled, a new one adds a row. Routing goes on meanwhile (the memory is
swapped whole under a lock). The grown router is published every `every` labels and on shutdown as a
new revision of a folder store (`carrot_hub.router_store.FolderStore`, the same store and publishing
code as `carrot learn`): a new folder written as a temporary folder and renamed into place, then
named by `LATEST`; the folder the router was loaded from is never written to. This is learning for
one process; with several workers or replicas, run one `carrot learn` on their logs instead.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from pathlib import Path

from ..router_store import LATEST_FILENAME, FolderStore
from ..modeling_carrot import prompt_has_content
from .outcome_log_writer import check_score

logger = logging.getLogger(__name__)

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

    A (request, model) labelled twice is learned once (its first label; the outcome log keeps every label and
    its loader uses the latest). Feedback whose served record has no prompt (`--no-prompt-log`), an
    empty one (zero-width characters only, served pinned) or names a model the router does not know
    is counted in `stats` and not learned.
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
        self.store = FolderStore(save_dir, keep=keep)
        self.save_dir = self.store.folder
        source = str(getattr(router, "name_or_path", "") or "")
        if source and Path(source).exists() and Path(source).resolve() == self.save_dir.resolve():
            raise ValueError(f"save_dir {self.save_dir} is the folder the router was loaded from; give a separate folder.")
        self.source = source or None
        self.every = every
        self.keep = keep
        self.stats = {"learned": 0, "repeated": 0, "without_prompt": 0, "empty_prompt": 0, "unknown_model": 0, "saves": 0}
        self.saved: list[Path] = []
        self._learned_ids: OrderedDict[str, None] = OrderedDict()
        self.max_batch = max_batch
        self._pending: list[tuple] = []
        self._unsaved = 0
        self._lock = threading.Lock()  # stats, queue, saves
        self._apply_lock = threading.Lock()  # one thread grows the memory at a time
        self._closed = False
        self._store_lock = None  # the store's writer lock, taken at the first save

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
            key = (request_id, model)  # a judged exploration labels two models of one request
            if key in self._learned_ids:
                self.stats["repeated"] += 1
                return
            if not isinstance(prompt, str):
                self.stats["without_prompt"] += 1
                if self.stats["without_prompt"] == 1:
                    logger.warning("Feedback for a request whose prompt was not logged (--no-prompt-log) is not learned.")
                return
            if not prompt_has_content(prompt):  # a pinned request of zero-width characters: no text to remember
                self.stats["empty_prompt"] += 1
                return
            if model not in self.router.config.candidate_models:
                self.stats["unknown_model"] += 1
                return
            self._learned_ids[key] = None
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
        """Publish a revision; the caller holds the apply lock (the memory does not change meanwhile)."""
        if self._unsaved == 0:
            return None
        if self._store_lock is None:  # one writer per store: a carrot learn or another --learn on it refuses
            self._store_lock = self.store.lock("carrot serve --learn")
            self.store.clean_temporary()
        state = {
            "grown_from": self.source,
            "labels_applied": self.stats["learned"],
            "labels_learned": self.stats["learned"],
            "memory_size": self.router.config.knn_memory_size,
            "remembered_rows": self.router.config.knn_remembered_rows,
            "saved_at": time.time(),
            "published_at": time.time(),
        }
        target = self.store.path(self.store.publish(self.router, state))
        self.saved = [path for path in self.saved if path.exists()]
        self.saved.append(target)
        self.stats["saves"] += 1
        self._unsaved = 0
        logger.info("Saved the grown router (%d labels learned) to %s", self.stats["learned"], target)
        return target

    def close(self) -> Path | None:
        """Save what was learned since the last save and stop learning; returns the last folder saved."""
        with self._lock:
            already, self._closed = self._closed, True
        if not already:
            self._apply_pending()  # what was queued before closing is learned
        with self._apply_lock:
            if not already:
                self._save()
                if self._store_lock is not None:
                    self._store_lock.release()
            return self.saved[-1] if self.saved else None


def latest_snapshot(save_dir) -> Path | None:
    """The newest grown router saved under `save_dir` (from its LATEST file), or None."""
    save_dir = Path(save_dir)
    pointer = save_dir / LATEST_FILENAME
    if not pointer.is_file():
        return None
    folder = save_dir / pointer.read_text(encoding="utf-8").strip()
    return folder if folder.is_dir() else None
