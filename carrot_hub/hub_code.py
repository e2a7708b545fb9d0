"""
The Python files that travel to the Hub as a router's remote code: `configuration_carrot.py`,
`modeling_carrot.py` and every flat sibling they import, found by following their literal
`from .x import ...` lines the way transformers' dynamic-module loader does (it downloads those
files from the Hub and copies them on `save_pretrained`). The list is derived, never kept by hand,
so a new sibling travels as soon as it is imported.
"""

from __future__ import annotations

import os
from pathlib import Path

from transformers.dynamic_module_utils import get_relative_imports

ENTRY_FILES = ("configuration_carrot.py", "modeling_carrot.py")
PACKAGE_DIR = Path(__file__).resolve().parent


def code_files(folder: str | os.PathLike = PACKAGE_DIR) -> tuple[list[str], list[str]]:
    """
    The remote-code files of `folder` (the package, or a saved router folder): `(found, missing)`,
    file names, `found` sorted, `missing` the entry files and relatively imported siblings that are
    not there. A router saved by an older release lists the files its own code imports.
    """
    folder = Path(folder)
    found, missing = set(), set()
    pending = list(ENTRY_FILES)
    while pending:
        name = pending.pop()
        if name in found or name in missing:
            continue
        path = folder / name
        if not path.is_file():
            missing.add(name)
            continue
        found.add(name)
        pending.extend(f"{module}.py" for module in get_relative_imports(path))
    return sorted(found), sorted(missing)


def package_code_files() -> list[str]:
    """The remote-code files of the installed package (what `save_pretrained` copies next to config.json)."""
    found, missing = code_files(PACKAGE_DIR)
    if missing:  # a broken install, not a user error
        raise RuntimeError(f"carrot_hub's remote code imports files it does not ship: {', '.join(missing)}.")
    return found


__all__ = ["ENTRY_FILES", "code_files", "package_code_files"]
