"""`carrot serve STORE --reload-every 60s`: a serving replica follows the newest router revision.

A thread checks the store every `every_s` seconds: a folder store's `LATEST` (a cheap file read), or
a Hub repo's newest commit. A new revision is loaded beside the router in use, checked (same
candidates, routes a prompt), and handed to `swap(router, revision)`, which the gateway runs on its
event loop, between routing batches: a batch already on the routing thread finishes with the old
router, the next one takes the new. A revision that fails to load or check is reported once
(log line, `carrot_reload_failures_total`) and skipped; the old router keeps serving.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from ..router_store import FolderStore, is_folder_store, is_hub_id

logger = logging.getLogger("carrot_hub.serving")
PROBE_PROMPT = "Is the router loaded?"


class RevisionSource:
    """
    Where revisions come from: a folder store, or a Hub model repo.

    `current()` → the newest revision id (None: none); `load(revision, dtype)` → the router.
    """

    def __init__(self, spec: str, token: str | None = None):
        self.spec = str(spec)
        self.token = token
        if is_folder_store(self.spec):
            self.store = FolderStore(self.spec)
        elif is_hub_id(self.spec):
            self.store = None
        else:
            raise ValueError(f"--reload-every follows a store of router revisions: {spec} is neither a folder with a "
                             "LATEST file (as carrot learn --out writes) nor a Hub repo id.")

    def current(self) -> str | None:
        if self.store is not None:
            return self.store.current()
        from huggingface_hub import HfApi

        return HfApi(token=self.token).model_info(self.spec).sha

    def load(self, revision: str, dtype="float32"):
        from ..modeling_carrot import CarrotRouter
        from ..progress import quiet_progress_bars

        with quiet_progress_bars():
            if self.store is not None:
                return CarrotRouter.from_pretrained(self.store.path(revision), dtype=dtype)
            return CarrotRouter.from_pretrained(self.spec, revision=revision, dtype=dtype, token=self.token)


class RouterReloader:
    """
    Polls a `RevisionSource` and hands each new, working revision to `swap`.

    Args:
        source: the `RevisionSource`.
        revision: the revision being served now.
        candidates: the served router's candidates; a revision with others is refused (the
            upstreams are set for these).
        swap: `swap(router, revision)`, called from this thread; the gateway schedules the swap on
            its event loop and returns.
        every_s: seconds between checks.
        prepare: `prepare(router)` before the swap (thread settings, dtype).
        on_failure: `on_failure(revision, message)` for a revision that is skipped.
    """

    def __init__(self, source: RevisionSource, revision: str | None, candidates, swap: Callable, every_s: float,
                 prepare: Callable | None = None, on_failure: Callable | None = None, dtype="float32"):
        self.source = source
        self.revision = revision
        self.candidates = list(candidates)
        self.swap = swap
        self.every_s = every_s
        self.prepare = prepare
        self.on_failure = on_failure
        self.dtype = dtype
        self.failed: set[str] = set()
        self.loaded = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def check(self) -> str | None:
        """One check: the revision swapped in, or None (nothing new, or it failed)."""
        try:
            newest = self.source.current()
        except Exception as error:  # noqa: BLE001  (a store out of reach: keep serving, try again later)
            logger.warning("could not check %s for a new router revision: %s", self.source.spec, error)
            return None
        if newest is None or newest == self.revision or newest in self.failed:
            return None
        started = time.perf_counter()
        try:
            router = self.source.load(newest, self.dtype)
            if list(router.config.candidate_models) != self.candidates:
                raise ValueError(f"its candidates ({', '.join(router.config.candidate_models)}) differ from the "
                                 f"served router's ({', '.join(self.candidates)}); restart the gateway to change them")
            if self.prepare is not None:
                self.prepare(router)
            router.route([PROBE_PROMPT])  # loaded whole and able to route before any request sees it
        except Exception as error:  # noqa: BLE001  (any failure: report, skip, keep the old router)
            self.failed.add(newest)
            message = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
            logger.error("router revision %s of %s failed to load and is skipped (still serving %s): %s",
                         newest, self.source.spec, self.revision, message)
            if self.on_failure is not None:
                self.on_failure(newest, message)
            return None
        router.carrot_revision = newest
        self.swap(router, newest)
        self.revision = newest
        self.loaded += 1
        logger.warning("now routing with revision %s of %s (loaded in %.1f s)", newest, self.source.spec,
                       time.perf_counter() - started)
        return newest

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="carrot-reload", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            self.check()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
