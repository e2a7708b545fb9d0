"""Writing a RoutingTable back in SPROUT's layout: a local dataset folder that `load_dataset` reads.

    folder/
      README.md                  dataset card: YAML `configs` (one parquet file per split), provenance, licence, models, prices
      prices.json                the price table, when there is one
      data/<split>-00000-of-00001.parquet
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..atomic_writing import atomic_folder
from .prices import PRICES_FILENAME, write_prices_file
from .routing_table import RoutingTable
from .validation import MODEL_FIELDS

METADATA_COLUMNS = ("key", "dataset", "dataset_level", "dataset_idx", "prompt", "golden_answer")
_CELL_TYPE = pa.struct([("score", pa.float32()), ("num_input_tokens", pa.int32()), ("num_output_tokens", pa.int32())])


def table_to_arrow(table: RoutingTable, extra_columns: Mapping[str, Sequence] | None = None) -> pa.Table:
    """
    One SPROUT-layout row per prompt: the metadata columns, then one struct column per model.
    `extra_columns` fills `dataset_level`, `dataset_idx`, `golden_answer` (strings; null when absent).
    NaN scores are written as null ("not observed"); so are NaN token counts.
    """
    extra = dict(extra_columns or {})
    n = len(table)
    unknown = [name for name in extra if name not in METADATA_COLUMNS[2:]]
    if unknown:
        raise ValueError(f"extra_columns {unknown} are not SPROUT metadata columns {list(METADATA_COLUMNS[2:])}.")
    for name, values in extra.items():
        if len(values) != n:
            raise ValueError(f"extra_columns[{name!r}] has {len(values)} values for {n} prompts.")
    clash = [m for m in table.models if m in METADATA_COLUMNS]
    if clash:
        raise ValueError(f"Model names {clash} collide with SPROUT metadata columns.")
    columns = {
        "key": pa.array(table.prompt_ids, pa.string()),
        "dataset": pa.array(table.tasks, pa.string()),
        "prompt": pa.array(table.prompts, pa.string()),
    }
    for name in ("dataset_level", "dataset_idx", "golden_answer"):
        values = extra.get(name)
        columns[name] = pa.array(
            [None if v is None else str(v) for v in values] if values is not None else [None] * n, pa.string()
        )
    arrays = {name: getattr(table, name) for name in ("scores", "input_tokens", "output_tokens")}
    for name in ("input_tokens", "output_tokens"):
        known = arrays[name][~np.isnan(arrays[name])]
        if known.size and (known.min() < 0 or not np.all(known == np.round(known))):
            raise ValueError(f"{name} must hold non-negative integers (or NaN for unknown).")
    ordered = {name: columns[name] for name in METADATA_COLUMNS}
    for j, model in enumerate(table.models):
        children = []
        for field_name, array, kind in zip(
            MODEL_FIELDS, (arrays["scores"], arrays["input_tokens"], arrays["output_tokens"]),
            (pa.float32(), pa.int32(), pa.int32()),
        ):
            column = array[:, j]
            mask = np.isnan(column)
            values = np.where(mask, 0, column).astype(kind.to_pandas_dtype())
            children.append(pa.array(values, kind, mask=mask))
        ordered[model] = pa.StructArray.from_arrays(children, fields=list(_CELL_TYPE))
    return pa.table(ordered)


def _yaml_list(items) -> str:
    return "\n".join(f"  - {item}" for item in items)


def dataset_card(
    splits: Mapping[str, RoutingTable],
    pretty_name: str,
    description: str,
    license: str | None = None,
    provenance: str | None = None,
    prices: Mapping | None = None,
    prices_recorded_on: str | None = None,
    prices_source: str | None = None,
    notes: str | None = None,
) -> str:
    """README.md for a SPROUT-layout folder: YAML front matter with one parquet config per split, then prose."""
    import json

    first = next(iter(splits.values()))
    configs = "\n".join(
        f"  - split: {name}\n    path: data/{name}-*.parquet" for name in splits
    )
    front = [
        "---",
        f"license: {license}" if license else None,
        f"pretty_name: {json.dumps(pretty_name)}",
        "tags:\n  - llm-routing\n  - carrot\n  - sprout-layout",
        "configs:\n- config_name: default\n  data_files:\n" + configs,
        "---",
    ]
    lines = [line for line in front if line is not None]
    lines += ["", f"# {pretty_name}", "", description.strip(), ""]
    if provenance:
        lines += ["## Provenance", "", provenance.strip(), ""]
    if license:
        lines += ["## Licence", "", f"`{license}`.", ""]
    lines += ["## Splits", "", "| split | prompts | models | cells with a score | missing scores |", "| --- | --- | --- | --- | --- |"]
    for name, table in splits.items():
        observed = int(table.observed.sum())
        lines.append(f"| {name} | {len(table)} | {len(table.models)} | {observed} | {table.scores.size - observed} |")
    lines += [
        "",
        "## Layout",
        "",
        "One row per prompt (SPROUT layout): `key` (unique id), `dataset` (source task), `dataset_level`, "
        "`dataset_idx`, `prompt`, `golden_answer`, and one column per candidate model holding "
        "`{score, num_input_tokens, num_output_tokens}`. A null `score` means the model's answer was not "
        "graded (missing), not a zero.",
        "",
        "```python",
        "import carrot_hub",
        'table = carrot_hub.load_routing_table("<this folder or repo id>", split="' + next(iter(splits)) + '")',
        "```",
        "",
        "## Models and prices",
        "",
    ]
    if prices:
        when = f", recorded on {prices_recorded_on}" if prices_recorded_on else ""
        source = f" Source: {prices_source}." if prices_source else ""
        lines += [f"US dollars per million tokens{when} (also in `prices.json`).{source}", "",
                  "| model | input | output |", "| --- | --- | --- |"]
        lines += [f"| {m} | {prices[m]['input']:g} | {prices[m]['output']:g} |" if m in prices else f"| {m} | ? | ? |"
                  for m in first.models]
    else:
        lines += ["No price table was recorded for this data set.", ""] + [f"- {m}" for m in first.models]
    if notes:
        lines += ["", "## Notes", "", notes.strip()]
    return "\n".join(lines) + "\n"


def write_sprout_dataset(
    tables: RoutingTable | Mapping[str, RoutingTable],
    folder: str | os.PathLike,
    *,
    pretty_name: str | None = None,
    description: str = "Routing data in SPROUT's layout, written by carrot_hub.",
    license: str | None = None,
    provenance: str | None = None,
    prices: Mapping | None = None,
    prices_recorded_on: str | None = None,
    prices_source: str | None = None,
    notes: str | None = None,
    extra_columns: Mapping[str, Mapping[str, Sequence]] | None = None,
    overwrite: bool = False,
    compression: str = "zstd",
) -> Path:
    """
    Write one or more RoutingTables (a table, or `{split: table}`) as a SPROUT-layout dataset folder:
    `data/<split>-00000-of-00001.parquet`, a README.md dataset card, and prices.json when there are
    prices (`prices=`, else the first table's). All splits must have the same models in the same order.
    `extra_columns` is `{split: {"dataset_level"|"dataset_idx"|"golden_answer": values}}`.
    Refuses to write into a non-empty folder unless `overwrite=True` (then only the files it writes are replaced).
    """
    if isinstance(tables, RoutingTable):
        tables = {tables.split or "train": tables}
    if not tables:
        raise ValueError("No tables to write.")
    models = next(iter(tables.values())).models
    for name, table in tables.items():
        if table.models != models:
            raise ValueError(f"Split {name!r} has models {table.models}, the first split has {models}: they must match.")
    folder = Path(folder)
    in_place = folder.exists() and any(folder.iterdir())
    if in_place and not overwrite:
        raise FileExistsError(f"{folder} is not empty; choose another folder or pass overwrite=True.")
    first = next(iter(tables.values()))
    prices = prices if prices is not None else first.prices
    prices_recorded_on = prices_recorded_on or first.metadata.get("prices_recorded_on")
    prices_source = prices_source or first.metadata.get("prices_source")
    card = dataset_card(
        tables,
        pretty_name=pretty_name or folder.name,
        description=description,
        license=license,
        provenance=provenance,
        prices=prices,
        prices_recorded_on=prices_recorded_on,
        prices_source=prices_source,
        notes=notes,
    )

    def write_into(target: Path) -> None:
        (target / "data").mkdir(parents=True, exist_ok=True)
        for old in (target / "data").glob("*.parquet"):
            old.unlink()
        for name, table in tables.items():
            arrow = table_to_arrow(table, (extra_columns or {}).get(name))
            pq.write_table(arrow, target / "data" / f"{name}-00000-of-00001.parquet", compression=compression)
        if prices:
            write_prices_file(target / PRICES_FILENAME, prices, prices_recorded_on, prices_source)
        elif (target / PRICES_FILENAME).exists():
            (target / PRICES_FILENAME).unlink()
        (target / "README.md").write_text(card, encoding="utf-8")

    if in_place:  # overwrite: only the files it writes are replaced, the folder's other files stay
        write_into(folder)
    else:  # a new folder appears whole or not at all (an interrupted conversion leaves nothing to clean)
        with atomic_folder(folder) as staging:
            write_into(staging)
    return folder
