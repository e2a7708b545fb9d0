"""Writing a trained router folder all at once: into a temporary sibling, then moved into place.

A crash, a full disk or Ctrl-C while saving leaves the previous folder (or nothing) behind, never a
half-written router that `from_pretrained` would load with missing weights.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path

ROUTER_FILES = ("config.json", "model.safetensors")


def holds_router(folder: str | os.PathLike) -> bool:
    """Whether `folder` already holds a saved router (a `config.json` or `model.safetensors`)."""
    folder = Path(folder)
    return folder.is_dir() and any((folder / name).exists() for name in ROUTER_FILES)


def check_output_dir(output_dir: str | os.PathLike, overwrite: bool = False) -> Path:
    """
    Raise `FileExistsError` (before any training starts) when `output_dir` holds a router or other
    files and `overwrite` is False, or when it is a file. Returns it as a `Path`.
    """
    output_dir = Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise FileExistsError(f"{output_dir} is a file, not a folder: choose a folder for the router.")
    if overwrite or not output_dir.exists():
        return output_dir
    if holds_router(output_dir):
        raise FileExistsError(
            f"{output_dir} already holds a router (config.json / model.safetensors). Choose another "
            "folder, or pass overwrite=True (--overwrite) to replace it."
        )
    if any(output_dir.iterdir()):
        raise FileExistsError(
            f"{output_dir} is not empty. Choose a new or empty folder, or pass overwrite=True "
            "(--overwrite) to replace its contents."
        )
    return output_dir


def save_router_atomically(
    router,
    output_dir: str | os.PathLike,
    overwrite: bool = False,
    extra_json: Mapping[str, object] | None = None,
) -> Path:
    """
    Save `router` (config, `model.safetensors`, tokenizer, remote code) into `output_dir`.

    The router is written into a temporary folder next to `output_dir` (same file system, so the
    final move is a rename). An existing folder is moved aside first and deleted only once the new
    one is in place; if anything fails, the old folder is put back.

    Args:
        router: a `CarrotRouter`.
        output_dir: the router folder to create.
        overwrite: replace a folder that already holds a router (or other files).
        extra_json: `{file name: JSON-serialisable object}` written next to the router, e.g. the
            training report.

    Returns:
        The path of the router folder.

    Raises:
        FileExistsError: `output_dir` holds a router or other files and `overwrite` is False.
    """
    output_dir = check_output_dir(output_dir, overwrite=overwrite).absolute()
    parent = output_dir.parent
    parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.tmp-", dir=parent))
    backup = None
    try:
        router.save_pretrained(staging)
        for name, payload in (extra_json or {}).items():
            (staging / name).write_text(json.dumps(payload, indent=2, default=_jsonable) + "\n")
        if output_dir.exists():
            backup = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.old-", dir=parent))
            backup.rmdir()
            os.replace(output_dir, backup)
        os.replace(staging, output_dir)
    except BaseException:
        if backup is not None and backup.exists() and not output_dir.exists():
            os.replace(backup, output_dir)
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if backup is not None:
        shutil.rmtree(backup, ignore_errors=True)
    return output_dir


def _jsonable(value):
    """JSON fallback for numpy / torch scalars and arrays in reports."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "item"):
        return value.item()
    return str(value)
