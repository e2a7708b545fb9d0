"""
Writing files and folders all at once: the content is written beside its destination under a
private hidden name, then put in place with one rename.

A crash, Ctrl-C, SIGKILL or a full disk while writing leaves the previous file or folder (or
nothing) behind, never a half-written one; a reader never sees a partial folder; and of several
processes publishing the same folder, one wins and the others can use the winner's.

- [`atomic_file`]: a handle whose content replaces `path` when the block ends;
- [`atomic_path`]: a temporary path for writers that take a file name (e.g. `safetensors.save_file`);
- [`atomic_folder`]: a staging folder that becomes `target` when the block ends.

Staging names carry the writer's process id (`.name.tmp-<pid>-…`): what a killed writer left
behind is removed by the next writer of the same destination (and a folder it had moved aside to
replace, `.name.old-<pid>-…`, is put back if the new one never arrived).
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

_STAGING = ".tmp-"
_OLD = ".old-"


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """
    A temporary path beside `path`; when the block ends without error it replaces `path` (one
    rename). On error the temporary file is removed and an existing `path` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_abandoned(path)
    handle, name = tempfile.mkstemp(prefix=_staging_prefix(path), dir=path.parent)
    os.close(handle)
    staging = Path(name)
    try:
        yield staging
        os.chmod(staging, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual mode
        os.replace(staging, path)
    except BaseException:
        with suppress(OSError):
            staging.unlink()
        raise


@contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8") -> Iterator:
    """An open handle (`mode` "w" or "wb") whose content replaces `path` only if the block finishes."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_file writes a whole file: mode must be 'w' or 'wb', not {mode!r}.")
    with atomic_path(path) as staging:
        with open(staging, mode, encoding=None if "b" in mode else encoding) as handle:
            yield handle


@contextmanager
def atomic_folder(target: str | os.PathLike, replace: bool = False) -> Iterator[Path]:
    """
    A new empty staging folder beside `target`, moved into place with one rename when the block
    ends without error (on error it is deleted and `target` is untouched).

    Args:
        target: the folder to create.
        replace: what to do when `target` already exists and is not empty when the block ends.
            False: raise `FileExistsError` (another writer got there first; its folder is kept).
            True: the old folder is moved aside, the new one moved in, then the old one deleted;
            if the move fails the old folder is put back.

    Yields:
        The staging folder (`Path`) to write into.
    """
    target = Path(target).absolute()
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_abandoned(target)
    staging = Path(tempfile.mkdtemp(prefix=_staging_prefix(target), dir=target.parent))
    try:
        yield staging
        os.chmod(staging, 0o777 & ~_umask())  # mkdtemp makes 0700
        _move_into_place(staging, target, replace)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _move_into_place(staging: Path, target: Path, replace: bool) -> None:
    try:
        os.rename(staging, target)  # succeeds when target is absent or an empty folder
        return
    except OSError as error:
        if error.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
            raise
        if not replace:
            raise FileExistsError(errno.EEXIST, f"{target} already exists and is not empty", str(target)) from None
    old = Path(tempfile.mkdtemp(prefix=f".{target.name}{_OLD}{os.getpid()}-", dir=target.parent))
    old.rmdir()
    os.rename(target, old)
    try:
        os.rename(staging, target)
    except BaseException:
        os.rename(old, target)
        raise
    if old.is_dir():
        shutil.rmtree(old, ignore_errors=True)
    else:
        old.unlink()


def _staging_prefix(destination: Path) -> str:
    return f".{destination.name}{_STAGING}{os.getpid()}-"


def _remove_abandoned(destination: Path) -> None:
    """Delete staging files / folders of `destination` whose writer process no longer runs."""
    for marker in (_STAGING, _OLD):
        prefix = f".{destination.name}{marker}"
        with suppress(OSError):
            for entry in destination.parent.iterdir():
                if not entry.name.startswith(prefix):
                    continue
                pid = entry.name[len(prefix):].split("-", 1)[0]
                if not pid.isdigit() or _process_alive(int(pid)):
                    continue
                if marker == _OLD and not destination.exists():
                    os.rename(entry, destination)  # killed between the two renames: the only copy goes back
                    continue
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    with suppress(OSError):
                        entry.unlink()


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


__all__ = ["atomic_file", "atomic_folder", "atomic_path"]
