"""Where a learning router's revisions live, shared by one writer (`carrot learn` or `--learn`) and
any number of serving replicas (`carrot serve STORE --reload-every`).

A **folder store** is a plain folder (local or shared: NFS, a mounted volume):

    STORE/
      LATEST                                the name of the current revision (replaced atomically)
      router-20261206T001500Z-000002-512labels/   one complete router folder per revision, with
      router-20261206T001600Z-000003-1024labels/  learning.json (what was learned, the log position)
      .learn.lock                           held (flock) by the one writer while it runs

A revision is written as a hidden temporary folder, renamed into place (it appears whole or not at
all), and only then named by `LATEST` (written to a temporary file and `os.replace`d). A writer
killed at any point leaves `LATEST` naming a complete older revision; its temporary folder is removed
by the next writer. Readers resolve `LATEST` once per load.

A **Hub store** is a model repo: each revision is a commit made by `push_to_hub`; its revision id is
the commit hash.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import socket
import time
from pathlib import Path

from .hub_checks import HUB_ID

LATEST_FILENAME = "LATEST"
REVISION_PREFIX = "router-"
STATE_FILENAME = "learning.json"
LOCK_FILENAME = ".learn.lock"


class StoreConflict(RuntimeError):
    """The store's current revision is not the one this writer last saw: another writer published meanwhile."""


class StoreLocked(RuntimeError):
    """Another writer holds the store: the message names it (host, process id, command, since when)."""


class StoreLock:
    """
    An exclusive `flock` on `STORE/.learn.lock` (or `filename`: `carrot logs judge` locks its log folder
    with it), released when the holder exits (also when killed), so a crashed writer never leaves a
    stale lock. The file holds who took it, for the refusal message, which ends with `advice`.
    """

    def __init__(self, folder: Path, owner: str, filename: str = LOCK_FILENAME,
                 advice: str = "one writer per store. Stop that one first, or give another store."):
        self.path = Path(folder) / filename
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self._fd, 4096, 0).decode("utf-8", "replace").strip() or "another process"
            os.close(self._fd)
            self._fd = None
            raise StoreLocked(f"{folder} is already being written by {holder}: {advice}") from None
        description = f"{owner} (pid {os.getpid()} on {socket.gethostname()}, since " \
                      f"{time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())})"
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, description.encode("utf-8"), 0)

    def release(self) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()


def is_hub_id(spec: str) -> bool:
    """Whether `spec` reads as a Hub repo id (`org/name`) rather than a path that exists."""
    return bool(HUB_ID.match(str(spec))) and not Path(spec).expanduser().exists()


def is_folder_store(path) -> bool:
    """Whether `path` is a folder store (it has a LATEST pointer)."""
    return (Path(path).expanduser() / LATEST_FILENAME).is_file()


class FolderStore:
    """
    A folder store (see the module docstring).

    Args:
        folder: the store folder (created on the first publish); must not itself be a router folder.
        keep: revisions kept (older ones are removed after each publish; None: all). A replica
            loading a removed revision reports it and loads the next one.
    """

    def __init__(self, folder, keep: int | None = 5):
        self.folder = Path(folder).expanduser()
        if self.folder.exists() and not self.folder.is_dir():
            raise NotADirectoryError(f"{self.folder} exists and is not a folder; choose another folder for the router revisions.")
        if (self.folder / "config.json").exists():
            raise ValueError(f"{self.folder} holds a router (config.json); router revisions are saved as new folders "
                             "inside a store folder, so give a separate folder.")
        if keep is not None and (isinstance(keep, bool) or not isinstance(keep, int) or keep < 1):
            raise ValueError(f"keep must be a positive number of revisions or None, got {keep!r}.")
        self.keep = keep

    def __str__(self) -> str:
        return str(self.folder)

    def lock(self, owner: str) -> StoreLock:
        """Take the store's writer lock (`StoreLocked` when another writer holds it)."""
        return StoreLock(self.folder, owner)

    def current(self) -> str | None:
        """The current revision's name (None: nothing published yet, or LATEST names no folder)."""
        try:
            name = (self.folder / LATEST_FILENAME).read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            return None
        return name if name and (self.folder / name).is_dir() else None

    def path(self, revision: str) -> Path:
        return self.folder / revision

    def read_state(self, revision: str) -> dict:
        """The revision's learning.json (empty when it has none)."""
        try:
            return json.loads((self.folder / revision / STATE_FILENAME).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}

    def _revisions(self) -> list[Path]:
        return sorted(p for p in self.folder.glob(f"{REVISION_PREFIX}*") if p.is_dir())

    def _next_number(self) -> int:
        numbers = [0]
        for path in self._revisions():
            match = re.match(rf"{REVISION_PREFIX}\d{{8}}T\d{{6}}Z-(\d+)", path.name)
            if match:
                numbers.append(int(match.group(1)))
        return max(numbers) + 1

    def clean_temporary(self) -> None:
        """Remove what a killed writer left: hidden temporary folders and files (call under the lock)."""
        if not self.folder.is_dir():
            return
        for path in self.folder.glob(".*.tmp"):
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)

    def publish(self, router, state: dict, parent: str | None = None) -> str:
        """
        A new revision holding `router` (saved with its model card) and `state` as learning.json:
        written into a temporary folder, renamed into place, then named by LATEST. Returns its name.
        `parent`: the revision the writer grew `router` from (`StoreConflict` when LATEST names
        another; None: the store must hold none yet, or the check is skipped for a first publish).
        """
        if parent is not None and self.current() != parent:
            raise StoreConflict(f"{self.folder} moved from revision {parent} to {self.current()}: another writer "
                                "published meanwhile, so nothing was published. Run one carrot learn per store.")
        self.folder.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        name = f"{REVISION_PREFIX}{stamp}-{self._next_number():06d}-{int(state.get('labels_applied', 0))}labels"
        temporary = self.folder / f".{name}.{os.getpid()}.tmp"
        try:
            save_revision(router, state, temporary)
            _fsync_tree(temporary)
            os.rename(temporary, self.folder / name)  # appears whole or not at all
        finally:
            if temporary.exists():
                shutil.rmtree(temporary, ignore_errors=True)
        pointer = self.folder / f".{LATEST_FILENAME}.{os.getpid()}.tmp"
        with open(pointer, "w", encoding="utf-8") as handle:
            handle.write(name + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(pointer, self.folder / LATEST_FILENAME)
        self._prune(name)
        return name

    def _prune(self, current: str) -> None:
        if self.keep is None:
            return
        revisions = [p for p in self._revisions() if p.name != current]
        for old in revisions[: max(0, len(revisions) - (self.keep - 1))]:
            shutil.rmtree(old, ignore_errors=True)


def _fsync_tree(folder: Path) -> None:
    """Force a revision's files to disk before LATEST names it (a power cut must not name empty files)."""
    for path in folder.rglob("*"):
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())


class HubStore:
    """
    A Hub model repo as a store: each revision is a commit made by `push_to_hub` (with
    learning.json), the revision id its commit hash. The writer lock is a local one (`lock_dir`);
    across machines, each commit names the revision it grew from as its `parent_commit`, so when a
    second writer has committed meanwhile the Hub refuses the commit (HTTP 412) and `publish`
    raises `StoreConflict` instead of publishing over the other writer's labels.
    """

    def __init__(self, repo_id: str, token: str | None = None, lock_dir=None):
        self.repo_id = repo_id
        self.token = token
        self.lock_dir = Path(lock_dir or Path.home() / ".cache" / "carrot" / "learn-locks" / repo_id.replace("/", "--"))

    def __str__(self) -> str:
        return self.repo_id

    def lock(self, owner: str) -> StoreLock:
        return StoreLock(self.lock_dir, owner)

    def clean_temporary(self) -> None:
        pass

    def current(self) -> str | None:
        """The repo's newest commit hash (None: the repo does not exist yet)."""
        from huggingface_hub import HfApi
        from huggingface_hub.utils import RepositoryNotFoundError

        try:
            return HfApi(token=self.token).model_info(self.repo_id).sha
        except RepositoryNotFoundError:
            return None

    def path(self, revision: str) -> str:
        return self.repo_id

    def read_state(self, revision: str) -> dict:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.utils import EntryNotFoundError

        try:
            path = hf_hub_download(self.repo_id, STATE_FILENAME, revision=revision, token=self.token)
        except EntryNotFoundError:
            return {}
        return json.loads(Path(path).read_text(encoding="utf-8"))

    def publish(self, router, state: dict, parent: str | None = None) -> str:
        """
        `router.push_to_hub` with learning.json in the same commit; returns the commit hash.
        `parent`: the commit the writer grew `router` from (`StoreConflict` when main has moved past it).
        """
        from .hub_checks import CommitConflict

        state_bytes = (json.dumps(state, indent=2) + "\n").encode("utf-8")
        try:
            result = router.push_to_hub(self.repo_id, token=self.token,
                                        commit_message=f"carrot learn: {state.get('labels_applied', 0)} labels applied",
                                        extra_files={STATE_FILENAME: state_bytes}, parent_commit=parent)
        except CommitConflict as conflict:
            raise StoreConflict(f"{conflict} (carrot learn: one writer per store.)") from None
        info = getattr(result, "commit_info", result)
        return getattr(info, "oid", None) or str(getattr(info, "commit_url", info))


def save_revision(router, state: dict, folder: Path) -> None:
    """Save `router` into `folder` with its model card and `state` as learning.json."""
    router.save_pretrained(folder)
    try:
        from model_card.build import build_model_card
    except ImportError:  # the card builder ships with the package; a trimmed install saves without it
        pass
    else:
        (Path(folder) / "README.md").write_text(build_model_card(router), encoding="utf-8")
    (Path(folder) / STATE_FILENAME).write_text(json.dumps(state, indent=2) + "\n", encoding="utf-8")


def open_store(spec, keep: int | None = 5, token: str | None = None):
    """A `FolderStore` for a path, a `HubStore` for a Hub repo id that is not a local path."""
    return HubStore(str(spec), token=token) if is_hub_id(str(spec)) else FolderStore(spec, keep=keep)


def resolve_router_source(spec) -> tuple[str, str | None]:
    """
    What to load for `spec` and its revision: a folder store → (its current revision's folder, the
    revision's name); a router folder or Hub id → (spec, None). `FileNotFoundError` for a store
    with nothing published.
    """
    path = Path(str(spec)).expanduser()
    if path.is_dir() and is_folder_store(path):
        store = FolderStore(path)
        revision = store.current()
        if revision is None:
            raise FileNotFoundError(f"The router store {path} names no complete revision in its LATEST file.")
        return str(store.path(revision)), revision
    return str(spec), None
