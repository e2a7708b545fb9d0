"""Opening a routing data source with `datasets.load_dataset`: a Hub repo id, a local folder, or files.

Every source goes through `load_dataset`, so a local copy and the Hub read the same way; failures
become one clear message (missing path, unknown repo, offline mode) instead of a deep traceback.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from ..hub_checks import HUB_ID_OR_NAME
from .prices import PRICES_FILENAME, read_prices_file

_BUILDERS = {".parquet": "parquet", ".jsonl": "json", ".json": "json", ".csv": "csv"}


class RoutingSourceError(OSError):
    """A routing data source that cannot be opened (missing, unknown, unreachable)."""


class MissingSplitError(RoutingSourceError):
    """The source opens, but has no split of the requested name (the message lists the ones it has)."""


def _builder_for(paths: Sequence[Path]) -> str:
    kinds = {_BUILDERS.get("".join(p.suffixes[-1:]).lower()) for p in paths}
    if None in kinds or len(kinds) != 1:
        raise RoutingSourceError(
            f"Cannot tell the format of {[str(p) for p in paths]}: give .parquet or .jsonl files (all of one kind)."
        )
    return kinds.pop()




def _looks_like_path(source: str) -> bool:
    """A string that cannot be a Hub repo id (`name` or `org/name`) is taken for a local path."""
    return not HUB_ID_OR_NAME.match(source) or Path(source).suffix.lower() in _BUILDERS


def open_dataset(source, split: str, streaming: bool, cache_dir: str | None = None):
    """
    `(dataset, prices_document_or_None, description)` for `source`: a local folder (read by
    `load_dataset(folder)`, which follows its README configs or file names), one or more local
    files, or a Hub dataset repo id. `dataset` is a `Dataset`, or an `IterableDataset` when streaming.
    `cache_dir` is used for local sources: `datasets` keys its cache of a folder with a README `configs`
    block by the folder's name and the patterns, not its path, so two folders named alike would share a
    cache entry; the caller passes a fresh folder.
    """
    import datasets

    if isinstance(source, (list, tuple)):
        paths = [Path(p).expanduser() for p in source]
    elif isinstance(source, (str, os.PathLike)):
        paths = [Path(source).expanduser()]
    else:
        raise TypeError(f"source must be a Hub repo id, a folder, or file paths, not {type(source).__name__}.")

    local = len(paths) > 1 or paths[0].exists() or _looks_like_path(str(source)) or isinstance(source, os.PathLike)
    if local:
        missing = [str(p) for p in paths if not p.exists()]
        if missing:
            raise RoutingSourceError(f"No such file or folder: {', '.join(missing)}.")
        if len(paths) == 1 and paths[0].is_dir():
            folder = paths[0]
            try:
                dataset = datasets.load_dataset(str(folder), split=split, streaming=streaming, cache_dir=cache_dir)
            except ValueError as error:  # an unknown split: say which ones exist
                raise MissingSplitError(f"Cannot read split {split!r} from {folder}: {error}") from None
            except (datasets.exceptions.DataFilesNotFoundError, FileNotFoundError) as error:
                raise RoutingSourceError(f"{folder} holds no data files load_dataset can read ({error}).") from None
        else:
            folder = paths[0].parent
            builder = _builder_for(paths)
            dataset = datasets.load_dataset(
                builder, data_files={split: [str(p) for p in paths]}, split=split, streaming=streaming, cache_dir=cache_dir
            )
        prices_path = folder / PRICES_FILENAME
        prices = read_prices_file(prices_path) if prices_path.is_file() else None
        return dataset, prices, str(folder if len(paths) == 1 and paths[0].is_dir() else paths[0])

    repo_id = str(source)
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    try:
        dataset = datasets.load_dataset(repo_id, split=split, streaming=streaming)
    except datasets.exceptions.DatasetNotFoundError:
        raise RoutingSourceError(
            f"No dataset {repo_id!r} on the Hugging Face Hub (or it is private: log in with `hf auth login` "
            "or set HF_TOKEN). For a local copy pass its folder or files instead."
        ) from None
    except (ConnectionError, OSError) as error:
        hint = (
            "HF_HUB_OFFLINE is set, so only datasets already in the local cache can be read"
            if offline
            else "the Hub could not be reached"
        )
        raise RoutingSourceError(
            f"Cannot load {repo_id!r}: {hint} ({error}). Pass a local folder or parquet/jsonl files in "
            "SPROUT layout instead, or unset HF_HUB_OFFLINE when online."
        ) from None
    except ValueError as error:
        raise MissingSplitError(f"Cannot read split {split!r} of {repo_id!r}: {error}") from None
    return dataset, _hub_prices(repo_id), repo_id


def local_data_files(source) -> list[Path]:
    """The parquet / JSONL files a local `source` (files, or a folder) reads from, in name order; [] for a Hub id."""
    paths = [Path(p).expanduser() for p in source] if isinstance(source, (list, tuple)) else [Path(source).expanduser()]
    files = []
    for path in paths:
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in _BUILDERS
                            and p.name != PRICES_FILENAME and not any(part.startswith(".") for part in p.parts))
        elif path.is_file():
            files.append(path)
    return files


def explain_unreadable(source, description: str, error: BaseException):
    """
    The `RoutingDataError` to raise when `datasets` failed to read `source`: the file (and line,
    or columns) at fault when one of the local files is empty, not parquet, not UTF-8, not JSON
    Lines, or has other columns than the first file; else the library's message with the source.
    """
    from .validation import RoutingDataError

    columns_seen: tuple[Path, list[str]] | None = None
    all_empty = True
    files = local_data_files(source)
    for path in files:
        problem, columns = _file_problem(path)
        if problem:
            return RoutingDataError(f"{path} {problem}.")
        if columns is None:  # empty
            continue
        all_empty = False
        if columns_seen is None:
            columns_seen = (path, columns)
        elif set(columns) != set(columns_seen[1]):
            first, first_columns = columns_seen
            extra = [c for c in columns if c not in first_columns]
            lacking = [c for c in first_columns if c not in columns]
            differences = "; ".join(
                part for part in (f"has columns {extra} that {first.name} lacks" if extra else "",
                                  f"lacks columns {lacking} that {first.name} has" if lacking else "") if part
            )
            return RoutingDataError(
                f"{path} {differences}: every file of a split must have the same model columns."
            )
    if files and all_empty:  # e.g. an empty JSONL file, which datasets reads as a StopIteration
        return RoutingDataError(f"{description} holds no rows: {', '.join(str(p) for p in files)} empty.")
    text = str(error).strip()
    detail = text.splitlines()[0] if text else type(error).__name__
    return RoutingDataError(f"Cannot read the routing data {description}: {type(error).__name__}: {detail}")


def _file_problem(path: Path) -> tuple[str | None, list[str] | None]:
    """`(problem, columns)` of one data file: a problem text, or None and its columns (None when it is empty)."""
    if path.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq

        try:
            parquet = pq.ParquetFile(path)
        except Exception as error:  # empty, truncated, or not parquet at all
            text = str(error).strip()
            return f"is not a readable parquet file ({text.splitlines()[0] if text else type(error).__name__})", None
        return None, (parquet.schema_arrow.names if parquet.metadata.num_rows else None)
    if path.suffix.lower() in (".jsonl", ".json"):
        import json

        columns = None
        with path.open("rb") as handle:
            for number, raw in enumerate(handle, start=1):
                if not raw.strip():
                    continue
                try:
                    record = json.loads(raw.decode("utf-8-sig" if number == 1 else "utf-8"))
                except UnicodeDecodeError as error:
                    return f"line {number} is not UTF-8 text (byte {raw[error.start:error.start + 1]!r})", None
                except ValueError as error:
                    return f"line {number} is not valid JSON ({getattr(error, 'msg', error)})", None
                if not isinstance(record, dict):
                    return f"line {number} is a JSON {type(record).__name__}, not an object (one row per line)", None
                if columns is None:
                    columns = list(record)
        return None, columns
    return None, []


def _hub_prices(repo_id: str) -> dict | None:
    """The repo's prices.json when it has one (None when absent or unreachable)."""
    try:
        from huggingface_hub import hf_hub_download

        path = hf_hub_download(repo_id, PRICES_FILENAME, repo_type="dataset")
    except Exception:  # absent, private or offline: the prices then come from the caller
        return None
    return read_prices_file(path)
