"""Schema discovery and row validation for SPROUT-layout routing data.

A SPROUT-layout row holds the metadata columns (`key`, `dataset`, `prompt`, ... ) and one struct column
per candidate model, `{score, num_input_tokens, num_output_tokens}`. Model columns are found from the
data's own schema, never from a list in code.

Missing values: a cell whose `score` is null is "not observed" (NaN in the table; its token counts may be
null too). A cell that is null as a whole means the model is absent from that row, which is an error,
as is an observed score without both token counts.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..errors import BadInputError

MODEL_FIELDS = ("score", "num_input_tokens", "num_output_tokens")
PROMPT_COLUMN, KEY_COLUMN, TASK_COLUMN = "prompt", "key", "dataset"


class RoutingDataError(BadInputError):
    """Routing data that does not have the SPROUT layout or holds an invalid value."""


_CELL_TYPE = pa.struct([("score", pa.float64()), ("num_input_tokens", pa.float64()), ("num_output_tokens", pa.float64())])


def _is_json_column(kind: pa.DataType) -> bool:
    return getattr(kind, "extension_name", None) == "arrow.json"


def _json_value(text):
    """A JSON cell's value (`datasets` hands JSON-typed cells over as their JSON text)."""
    if text is None:
        return None
    try:
        return json.loads(text)
    except (TypeError, ValueError):
        return text


def _number_or_problem(value, where: str) -> tuple[float | None, str | None]:
    if value is None:
        return None, None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None, f"{where} = {value!r:.40} is not a number"
    try:
        return float(value), None
    except OverflowError:  # an integer of hundreds of digits
        return None, f"{where} = {value!r:.40} is not a finite number"


def decode_json_columns(batch: pa.Table, problems: dict[int, list[str]] | None = None, offset: int = 0) -> pa.Table:
    """
    `datasets` stores a JSON column whose values do not all have one type as JSON text
    (`extension<arrow.json>`): a model column where one cell lacks a field or holds text, a model
    cell's field where one row holds text, a prompt column where one prompt is a number. They are
    turned back into `{score, num_input_tokens, num_output_tokens}` structs of numbers and a text
    prompt column. A value of the wrong type becomes null and, when `problems` is given, is listed
    under its row (`{row_in_batch: [reason, ...]}`) for row validation to report or skip; without
    `problems`, the first one raises `RoutingDataError` naming its row (`offset` + row in batch).
    """

    def report(row: int, reason: str) -> None:
        if problems is None:
            raise RoutingDataError(f"Row {offset + row}: {reason}.")
        problems.setdefault(row, []).append(reason)

    for index, column in enumerate(batch.schema):
        if column.name == PROMPT_COLUMN:
            if _is_json_column(column.type):  # a number among the prompts: null, reported by row validation
                prompts = [_json_value(text) for text in batch.column(index).to_pylist()]
                prompts = [p if isinstance(p, str) else None for p in prompts]
                batch = batch.set_column(index, column.name, pa.array(prompts, type=pa.string()))
            continue
        if _is_json_column(column.type):
            cells = [_json_value(text) for text in batch.column(index).to_pylist()]
            if not any(isinstance(c, dict) and set(c) & set(MODEL_FIELDS) for c in cells):
                continue
        elif pa.types.is_struct(column.type) and any(
            _is_json_column(column.type.field(i).type) for i in range(column.type.num_fields)
        ):
            json_fields = {column.type.field(i).name for i in range(column.type.num_fields)
                           if _is_json_column(column.type.field(i).type)}
            cells = [
                None if cell is None else {k: _json_value(v) if k in json_fields else v for k, v in cell.items()}
                for cell in batch.column(index).to_pylist()
            ]
        else:
            continue
        values = []
        for row, cell in enumerate(cells):
            if cell is None:
                values.append(None)
                continue
            if not isinstance(cell, dict):
                report(row, f"model column {column.name!r} holds {cell!r:.40}, not an object")
                values.append(None)
                continue
            decoded = {}
            for name in MODEL_FIELDS:
                decoded[name], problem = _number_or_problem(cell.get(name), f"{column.name!r}.{name}")
                if problem:
                    report(row, problem)
            values.append(decoded)
        batch = batch.set_column(index, column.name, pa.array(values, type=_CELL_TYPE))
    return batch


def discover_model_columns(schema: pa.Schema) -> list[str]:
    """
    The model columns of a SPROUT-layout schema, in schema order: every struct column with any of
    `score`, `num_input_tokens`, `num_output_tokens`. Raises when one lacks some of the three fields,
    when a field is not numeric, or when there is no model column or no `prompt` column.
    """
    if PROMPT_COLUMN not in schema.names:
        raise RoutingDataError(f"The data has no 'prompt' column (columns: {schema.names}); it is not in SPROUT layout.")
    prompt_type = schema.field(PROMPT_COLUMN).type
    if _is_json_column(prompt_type):
        raise RoutingDataError("The 'prompt' column mixes text with other values; every prompt must be a string.")
    if not (pa.types.is_string(prompt_type) or pa.types.is_large_string(prompt_type) or pa.types.is_null(prompt_type)):
        raise RoutingDataError(f"The 'prompt' column holds {prompt_type}, not text; every prompt must be a string.")
    models = []
    for column in schema:
        if not pa.types.is_struct(column.type):
            continue
        names = [column.type.field(i).name for i in range(column.type.num_fields)]
        if not set(names) & set(MODEL_FIELDS):
            continue
        lacking = [name for name in MODEL_FIELDS if name not in names]
        if lacking:
            raise RoutingDataError(
                f"Model column {column.name!r} lacks {lacking}: every model cell must be "
                "{score, num_input_tokens, num_output_tokens}."
            )
        for name in MODEL_FIELDS:
            kind = column.type.field(name).type
            if not (pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_null(kind)):
                raise RoutingDataError(f"{column.name!r}.{name} holds {kind}, expected numbers.")
        models.append(column.name)
    if not models:
        raise RoutingDataError(
            "Found no model columns: SPROUT layout has one struct column per model with fields "
            f"{list(MODEL_FIELDS)}; the columns are {schema.names}."
        )
    return models


def _as_float(array: pa.Array) -> np.ndarray:
    """Arrow numeric array -> float64 numpy with NaN for nulls."""
    if pa.types.is_null(array.type):
        return np.full(len(array), np.nan)
    return np.array(pc.fill_null(pc.cast(array, pa.float64()), float("nan")).to_numpy(zero_copy_only=False))


def _as_text(array: pa.Array) -> list:
    return array.to_pylist()


@dataclass
class BatchArrays:
    """One validated batch: `keep` rows only. Arrays are float32 `(n_kept, n_models)`."""

    prompts: list[str]
    keys: list[str]
    tasks: list[str]
    scores: np.ndarray
    input_tokens: np.ndarray
    output_tokens: np.ndarray
    skipped: list[dict] = field(default_factory=list)


class RowValidator:
    """
    Turns Arrow batches of SPROUT-layout rows into arrays, checking every row. Keeps the set of ids
    seen so far, so duplicate ids are caught across batches.

    on_error="raise": the first bad row raises RoutingDataError naming the row, its key and the problem.
    on_error="skip": bad rows are left out and listed (`{"row", "key", "reason"}`) in the result.
    """

    def __init__(self, models: list[str], on_error: str = "raise"):
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', not {on_error!r}.")
        self.models = list(models)
        self.on_error = on_error
        self.seen_keys: set[str] = set()
        self.rows_read = 0

    def __call__(self, batch: pa.Table) -> BatchArrays:
        problems: dict[int, list[str]] = {}
        batch = decode_json_columns(batch, problems)
        n = batch.num_rows
        offset = self.rows_read
        self.rows_read += n
        missing = [m for m in self.models if m not in batch.column_names]
        if missing:
            raise RoutingDataError(f"Rows from {offset} on lack the model columns {missing} present earlier in the data.")
        reasons: list[list[str]] = [list(problems.get(i, ())) for i in range(n)]

        prompts = _as_text(batch.column(PROMPT_COLUMN).combine_chunks())
        keys = (
            [None if k is None else str(k) for k in batch.column(KEY_COLUMN).to_pylist()]
            if KEY_COLUMN in batch.column_names
            else [str(offset + i) for i in range(n)]
        )
        tasks = (
            ["" if t is None else str(t) for t in batch.column(TASK_COLUMN).to_pylist()]
            if TASK_COLUMN in batch.column_names
            else [""] * n
        )
        for i, prompt in enumerate(prompts):
            if not isinstance(prompt, str):
                reasons[i].append("prompt is not text")
            elif not prompt.strip():
                reasons[i].append("prompt is empty")
            if keys[i] is None:
                reasons[i].append("key is missing")

        shape = (n, len(self.models))
        scores, input_tokens, output_tokens = (np.full(shape, np.nan) for _ in range(3))
        for j, model in enumerate(self.models):
            column = batch.column(model).combine_chunks()
            present = column.is_valid().to_numpy(zero_copy_only=False)
            values = {name: _as_float(column.field(name)) for name in MODEL_FIELDS}
            for name in MODEL_FIELDS:
                values[name][~present] = np.nan
            score, n_in, n_out = values["score"], values["num_input_tokens"], values["num_output_tokens"]
            for i in np.flatnonzero(~present):
                reasons[i].append(f"model {model!r} is absent from this row (present in the data's other rows)")
            bad_score = present & ~np.isnan(score) & ((score < 0) | (score > 1))
            for i in np.flatnonzero(bad_score):
                reasons[i].append(f"{model!r}.score = {score[i]:g} is outside [0, 1]")
            for name, tokens in (("num_input_tokens", n_in), ("num_output_tokens", n_out)):
                # A null score marks a cell as not observed: its token counts may then be null too.
                for i in np.flatnonzero(present & ~np.isnan(score) & np.isnan(tokens)):
                    reasons[i].append(f"{model!r} cell lacks {name}")
                known = present & ~np.isnan(tokens)
                for i in np.flatnonzero(known & ((tokens < 0) | (tokens != np.round(tokens)) | ~np.isfinite(tokens))):
                    reasons[i].append(f"{model!r}.{name} = {tokens[i]:g} is not a non-negative integer")
            scores[:, j], input_tokens[:, j], output_tokens[:, j] = score, n_in, n_out

        # Duplicates: the first occurrence is kept, later ones are bad rows.
        for i, key in enumerate(keys):
            if key is None:
                continue
            if key in self.seen_keys:
                reasons[i].append(f"duplicate prompt id {key!r}")
            elif not reasons[i]:
                self.seen_keys.add(key)

        bad = [i for i in range(n) if reasons[i]]
        if bad and self.on_error == "raise":
            i = bad[0]
            raise RoutingDataError(
                f"Row {offset + i} (key {keys[i]!r}): {'; '.join(reasons[i])}. "
                "Fix the data, or pass on_error='skip' to leave bad rows out with a report."
            )
        skipped = [{"row": offset + i, "key": keys[i], "reason": "; ".join(reasons[i])} for i in bad]
        keep = np.array([i for i in range(n) if not reasons[i]], dtype=np.int64)
        return BatchArrays(
            prompts=[prompts[i] for i in keep],
            keys=[keys[i] for i in keep],
            tasks=[tasks[i] for i in keep],
            scores=scores[keep].astype(np.float32),
            input_tokens=input_tokens[keep].astype(np.float32),
            output_tokens=output_tokens[keep].astype(np.float32),
            skipped=skipped,
        )
