"""The routing tables shipped inside the package, by name: `carrot_hub/default_data/<name>/`.

Each packaged table is a SPROUT-layout folder (`data/*.parquet`, `prices.json`, `README.md` with its
provenance and licences) plus what the default router built on it needs: `default_router.json` (its
settings, chosen out-of-fold on the train split) and `train_embeddings.safetensors` (the train
prompts' embeddings, keyed like `carrot_hub.embedding_cache`). Table names are folder names: adding
a table is adding a folder, never code.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

PACKAGED_DATA_DIR = Path(__file__).resolve().parent.parent / "default_data"
DEFAULT_TABLE = "routerbench-0shot"
ROUTER_DEFAULTS_FILENAME = "default_router.json"
EMBEDDINGS_FILENAME = "train_embeddings.safetensors"


class UnknownTableError(ValueError):
    """A table name that is not one of the packaged tables."""


def packaged_tables() -> list[str]:
    """Names of the packaged tables (folders with `data/` and `prices.json`), the default first."""
    names = sorted(
        folder.name
        for folder in PACKAGED_DATA_DIR.iterdir()
        if folder.is_dir() and (folder / "data").is_dir() and (folder / "prices.json").is_file()
    )
    return sorted(names, key=lambda name: name != DEFAULT_TABLE)


def packaged_table_dir(name: str) -> Path:
    """The folder of the packaged table `name`; `UnknownTableError` listing the packaged ones otherwise."""
    names = packaged_tables()
    if not isinstance(name, str) or name not in names:
        raise UnknownTableError(
            f"No packaged routing table named {name!r}; the packaged tables are {', '.join(names)}."
        )
    return PACKAGED_DATA_DIR / name


def packaged_table_models(name: str) -> list[str]:
    """The candidate models of a packaged table, from its parquet schema (no rows read)."""
    import pyarrow.parquet as pq

    from .validation import discover_model_columns

    first = sorted((packaged_table_dir(name) / "data").glob("*.parquet"))[0]
    return discover_model_columns(pq.read_schema(first))


def resolve_table_source(source: str | os.PathLike, strict: bool = True) -> str:
    """
    A `--data` value as `load_routing_table` takes it: a packaged table name becomes its folder; an
    existing path or an `org/name` Hub id is kept. A bare name that is neither (no such file, no
    `/`) is refused with the list of packaged tables, instead of a Hub lookup of a typo, unless
    `strict=False` (then it is kept, for `load_routing_table` to try as a Hub id).
    """
    text = os.fspath(source)
    if text in packaged_tables():
        return str(PACKAGED_DATA_DIR / text)
    if not strict or Path(text).expanduser().exists() or "/" in text or os.sep in text:
        return text
    raise UnknownTableError(
        f"{text!r} is neither a packaged routing table ({', '.join(packaged_tables())}) nor an existing "
        "folder or file; give one of those names, a SPROUT-layout folder, or an org/name Hub dataset id."
    )


def table_name(source: str | os.PathLike) -> str:
    """A short name for a data source (for results files): the folder or file name, or the Hub id's name."""
    text = os.fspath(source).rstrip("/\\")
    return Path(text).stem if Path(text).suffix else Path(text).name


def read_router_defaults(name: str) -> dict:
    """The packaged table's `default_router.json` (`knn_k`, `max_prompt_tokens`, `training_data`, ...)."""
    path = packaged_table_dir(name) / ROUTER_DEFAULTS_FILENAME
    if not path.is_file():
        raise FileNotFoundError(f"The packaged table {name!r} has no {ROUTER_DEFAULTS_FILENAME}: the package is incomplete.")
    return json.loads(path.read_text(encoding="utf-8"))


def read_card_title(folder: str | os.PathLike) -> str | None:
    """The `pretty_name` of a table folder's README.md front matter, or None."""
    import yaml

    readme = Path(folder) / "README.md"
    if not readme.is_file():
        return None
    text = readme.read_text(encoding="utf-8")
    if not text.startswith("---"):
        return None
    try:
        front = yaml.safe_load(text.split("---", 2)[1])
    except (yaml.YAMLError, IndexError):
        return None
    title = front.get("pretty_name") if isinstance(front, dict) else None
    return str(title) if title else None


_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*$")


def read_caveats(folder: str | os.PathLike) -> list[str]:
    """
    The bullets of the `## Caveats` section of a table folder's README.md (continuation lines
    joined), `[]` when there is no README or no such section. Model cards quote them.
    """
    readme = Path(folder) / "README.md"
    if not readme.is_file():
        return []
    caveats, level = [], None
    for line in readme.read_text(encoding="utf-8").splitlines():
        heading = _HEADING.match(line)
        if heading:
            if level is not None and len(heading.group(1)) <= level:
                break
            if heading.group(2).strip().lower() == "caveats":
                level = len(heading.group(1))
            continue
        if level is None:
            continue
        stripped = line.strip()
        if stripped.startswith(("- ", "* ")):
            caveats.append(stripped[2:].strip())
        elif stripped and caveats and line.startswith((" ", "\t")):
            caveats[-1] += " " + stripped
    return caveats


__all__ = [
    "DEFAULT_TABLE",
    "EMBEDDINGS_FILENAME",
    "PACKAGED_DATA_DIR",
    "ROUTER_DEFAULTS_FILENAME",
    "UnknownTableError",
    "packaged_table_dir",
    "packaged_table_models",
    "packaged_tables",
    "read_caveats",
    "read_card_title",
    "read_router_defaults",
    "resolve_table_source",
    "table_name",
]
