"""Writing a trained router folder all at once: into a temporary sibling, then moved into place.

A crash, a full disk or Ctrl-C while saving leaves the previous folder (or nothing) behind, never a
half-written router that `from_pretrained` would load with missing weights. Where a router folder
may go is `carrot_hub.router_folder.check_output_dir` (shared with `carrot set-prices`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

from carrot_hub.atomic_writing import atomic_folder
from carrot_hub.router_folder import check_output_dir, holds_router


def save_router_atomically(
    router,
    output_dir: str | os.PathLike,
    overwrite: bool = False,
    extra_json: Mapping[str, object] | None = None,
) -> Path:
    """
    Save `router` (config, `model.safetensors`, tokenizer, remote code) into `output_dir`.

    The router is written into a temporary folder next to `output_dir` and moved into place with one
    rename (`carrot_hub.atomic_writing.atomic_folder`). An existing router folder is moved aside first
    and deleted only once the new one is in place; if anything fails, the old folder is put back.

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
    with atomic_folder(output_dir, replace=overwrite) as staging:
        router.save_pretrained(staging)
        for name, payload in (extra_json or {}).items():
            (staging / name).write_text(json.dumps(payload, indent=2, default=_jsonable) + "\n")
    return output_dir


def _jsonable(value):
    """JSON fallback for numpy / torch scalars and arrays in reports."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "item"):
        return value.item()
    return str(value)


__all__ = ["check_output_dir", "holds_router", "save_router_atomically"]
