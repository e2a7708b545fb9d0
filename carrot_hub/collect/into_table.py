"""`--into TABLE`: add the collected models (columns) and prompts (rows) to an existing table.

The existing table is read whole (every split, its metadata columns, its `answers/`), merged, and
written back in one step (`write_collected_table(replace=True)`): a reader sees the old table or the
new one, never half. A clash is refused before anything is written (`TableClashError`):
- a collected prompt whose key the table has with another text, or whose text it has under another key;
- a collected prompt that is in another split of the table;
- a cell the table already has that this collection would write differently (the same values, as
  when the same `--into` command is run again, are not a clash).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..data.routing_table import RoutingTable
from .table_building import ANSWERS_DIR, ANSWER_SCHEMA, TableClashError

EXTRA_COLUMNS = ("dataset_level", "dataset_idx", "golden_answer")


@dataclass
class ExistingTable:
    """A SPROUT-layout folder read whole: `{split: RoutingTable}`, `{split: {column: values}}`, `{split: answers}`."""

    folder: Path
    splits: dict[str, RoutingTable]
    extras: dict[str, dict[str, list]]
    answers: dict[str, pa.Table]
    prices: dict | None
    prices_recorded_on: str | None = None
    prices_source: str | None = None


def read_existing_table(folder: str | os.PathLike) -> ExistingTable:
    """Every split of the SPROUT-layout folder `folder` (`TableClashError` when it is not one)."""
    from ..data import load_routing_table

    folder = Path(folder).expanduser()
    files = sorted((folder / "data").glob("*-00000-of-00001.parquet")) if folder.is_dir() else []
    if not files:
        raise TableClashError(f"--into {folder}: not a routing table folder written in SPROUT layout "
                              "(no data/<split>-00000-of-00001.parquet); use --out to make a new one.")
    splits, extras, answers = {}, {}, {}
    for file in files:
        split = file.name.split("-00000-of-00001")[0]
        table = load_routing_table(str(folder), split=split)
        splits[split] = table
        names = [c for c in EXTRA_COLUMNS if c in pq.read_schema(file).names]
        columns = pq.read_table(file, columns=names).to_pydict() if names else {}
        extras[split] = {c: columns.get(c, [None] * len(table)) for c in EXTRA_COLUMNS}
        answer_file = folder / ANSWERS_DIR / f"{split}.parquet"
        answers[split] = pq.read_table(answer_file) if answer_file.is_file() else ANSWER_SCHEMA.empty_table()
    first = next(iter(splits.values()))
    return ExistingTable(folder, splits, extras, answers, first.prices,
                         first.metadata.get("prices_recorded_on"), first.metadata.get("prices_source"))


def _with_models(table: RoutingTable, models: list[str]) -> RoutingTable:
    """`table` with columns `models` (the new ones all missing)."""
    n = len(table)
    arrays = {}
    for name in ("scores", "input_tokens", "output_tokens"):
        out = np.full((n, len(models)), np.nan, np.float32)
        source = getattr(table, name)
        for j, model in enumerate(models):
            if model in table.models:
                out[:, j] = source[:, table.models.index(model)]
        arrays[name] = out
    return RoutingTable(list(table.prompts), list(table.prompt_ids), list(table.tasks), list(models),
                        prices=table.prices, split=table.split, metadata=dict(table.metadata), **arrays)


def _same(a: float, b: float) -> bool:
    return (np.isnan(a) and np.isnan(b)) or a == b


def merge_into(existing: ExistingTable, split: str, new: RoutingTable, new_extras: Mapping[str, list],
               new_answers: pa.Table) -> tuple[dict, dict, dict]:
    """
    `(splits, extras, answers)` of the table with `new` merged into `split` (a new split is created if
    the table has none of that name). Raises `TableClashError` naming the first clash.
    """
    models = list(next(iter(existing.splits.values())).models)
    models += [m for m in new.models if m not in models]
    where = f"--into {existing.folder}"
    for other, table in existing.splits.items():
        if other != split:
            shared = set(table.prompt_ids) & set(new.prompt_ids)
            if shared:
                raise TableClashError(f"{where}: prompt {sorted(shared)[0]!r} is in its {other!r} split already; "
                                      f"collecting it into {split!r} would put one prompt in two splits.")
    base = existing.splits.get(split)
    if base is None:
        base = RoutingTable([], [], [], models, np.zeros((0, len(models))), np.zeros((0, len(models))),
                            np.zeros((0, len(models))), split=split)
    base = _with_models(base, models)
    row_of = {key: i for i, key in enumerate(base.prompt_ids)}
    key_of_text = {text: key for key, text in zip(base.prompt_ids, base.prompts)}
    added = []
    for i, key in enumerate(new.prompt_ids):
        text = new.prompts[i]
        if key in row_of:
            if base.prompts[row_of[key]] != text:
                raise TableClashError(f"{where}: the table's prompt {key!r} has another text than the collected "
                                      "prompt of that key; give the prompt set the table's keys or other keys.")
        elif text in key_of_text:
            raise TableClashError(f"{where}: the collected prompt {key!r} is already in the table under the key "
                                  f"{key_of_text[text]!r}; key the prompt set's rows like the table does.")
        else:
            added.append(i)
    merged = RoutingTable.concatenate([base, _with_models(new.subset(added), models)]) if added else base
    merged.split, merged.prices, merged.metadata = split, base.prices, dict(base.metadata)
    row_of = {key: i for i, key in enumerate(merged.prompt_ids)}
    for i, key in enumerate(new.prompt_ids):
        r = row_of[key]
        for j, model in enumerate(new.models):
            c = models.index(model)
            incoming = (new.scores[i, j], new.input_tokens[i, j], new.output_tokens[i, j])
            if np.isnan(incoming[1]):  # this collection has nothing for the cell: leave the table's
                continue
            present = (merged.scores[r, c], merged.input_tokens[r, c], merged.output_tokens[r, c])
            held = not (np.isnan(present[0]) and np.isnan(present[1]))
            if held and not all(_same(a, b) for a, b in zip(present, incoming)):
                raise TableClashError(
                    f"{where}: the table already has {model!r} on prompt {key!r} (score {present[0]:g}); "
                    "collecting it again would overwrite it. Leave that model out (--models) or collect into "
                    "another table."
                )
            merged.scores[r, c], merged.input_tokens[r, c], merged.output_tokens[r, c] = incoming
    splits, extras, answers = {}, {}, {}
    for name, table in existing.splits.items():
        splits[name] = _with_models(table, models) if name != split else merged
        extras[name] = existing.extras[name]
        answers[name] = existing.answers[name]
    splits[split] = merged
    old_extras = existing.extras.get(split, {c: [] for c in EXTRA_COLUMNS})
    extras[split] = {c: list(old_extras[c]) + [new_extras.get(c, [None] * len(new))[i] for i in added]
                     for c in EXTRA_COLUMNS}
    old_answers = existing.answers.get(split, ANSWER_SCHEMA.empty_table()).cast(ANSWER_SCHEMA)
    replaced = {(k, m) for k, m in zip(new_answers.column("key").to_pylist(), new_answers.column("model").to_pylist())}
    keep = [(k, m) not in replaced for k, m in zip(old_answers.column("key").to_pylist(),
                                                   old_answers.column("model").to_pylist())]
    answers[split] = pa.concat_tables([old_answers.filter(pa.array(keep, pa.bool_())), new_answers.cast(ANSWER_SCHEMA)])
    return splits, extras, answers
