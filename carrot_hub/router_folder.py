"""
Where a router folder may be written: a new or empty folder, or (when asked to overwrite) a folder
that already holds a router, never a folder of other files (`--out .` must not empty the working
directory). Checked before any work starts; the writing itself is `atomic_writing.atomic_folder`.
"""

from __future__ import annotations

import os
from pathlib import Path

ROUTER_FILES = ("config.json", "model.safetensors")


def holds_router(folder: str | os.PathLike) -> bool:
    """Whether `folder` already holds a saved router (a `config.json` or `model.safetensors`)."""
    folder = Path(folder)
    return folder.is_dir() and any((folder / name).exists() for name in ROUTER_FILES)


def check_output_dir(output_dir: str | os.PathLike, overwrite: bool = False) -> Path:
    """
    Raise `FileExistsError` (before any training starts) when `output_dir` cannot take a router:
    it is a file; it holds a router and `overwrite` is False; or it holds other files (never
    replaced, even with `overwrite`: only a router folder is). Returns it as a `Path`.
    """
    output_dir = Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise FileExistsError(f"{output_dir} is a file, not a folder: choose a folder for the router.")
    if not output_dir.exists() or not any(output_dir.iterdir()):
        return output_dir
    if holds_router(output_dir):
        if overwrite:
            return output_dir
        raise FileExistsError(
            f"{output_dir} already holds a router (config.json / model.safetensors). Choose another "
            "folder, or pass overwrite=True (--overwrite) to replace it."
        )
    raise FileExistsError(
        f"{output_dir} is not empty and holds no router: choose a new or empty folder (--overwrite only "
        "replaces a folder that holds a router, so that nothing else is deleted)."
    )


__all__ = ["ROUTER_FILES", "check_output_dir", "holds_router"]
