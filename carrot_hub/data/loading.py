"""`load_routing_table`: SPROUT-layout data (Hub, streamed or not; local folder; files) -> RoutingTable."""

from __future__ import annotations

import os
import tempfile
import warnings
from collections.abc import Mapping

import numpy as np
from tqdm.auto import tqdm

from ..progress import quiet_progress_bars
from .packaged import read_caveats, read_card_title
from .prices import validate_prices
from .routing_table import RoutingTable
from .sources import RoutingSourceError, explain_unreadable, open_dataset
from .validation import RoutingDataError, RowValidator, decode_json_columns, discover_model_columns


def _read_batches(dataset, split, streaming, on_error, batch_size, progress):
    """Validate `dataset` batch by batch (Arrow batches of `batch_size` rows); `(validator, parts)`."""
    validator = None
    parts = []
    total = None if streaming else getattr(dataset, "num_rows", None)
    bar = tqdm(total=total, desc=f"reading {split}", unit="row", disable=not progress)
    for batch in dataset.with_format("arrow").iter(batch_size=batch_size):
        if validator is None:
            # Features may be unknown before the first batch (streamed JSON); the batch schema is exact.
            # Values of the wrong type in it are set aside here and reported by row by the validator.
            validator = RowValidator(discover_model_columns(decode_json_columns(batch, {}).schema), on_error=on_error)
        parts.append(validator(batch))
        bar.update(batch.num_rows)
    bar.close()
    return validator, parts


def _outcome_log_folder(source):
    """The folder, when `source` is the outcome log of a `carrot serve` gateway (see `outcome_log_reader`)."""
    from pathlib import Path

    from .outcome_log_reader import is_outcome_log

    if isinstance(source, (str, os.PathLike)) and is_outcome_log(Path(source).expanduser()):
        return Path(source).expanduser()
    return None


def load_routing_table(
    source,
    split: str = "train",
    streaming: bool = False,
    prices: Mapping[str, Mapping[str, float]] | None = None,
    on_error: str = "raise",
    batch_size: int = 1000,
    progress: bool = False,
) -> RoutingTable:
    """
    Read routing data in SPROUT's layout into a [`RoutingTable`].

    Args:
        source: a Hub dataset repo id (e.g. `"CARROT-LLM-Routing/SPROUT"`), a local folder that
            `datasets.load_dataset` reads (parquet/jsonl files, a README with configs), or one or more
            `.parquet` / `.jsonl` file paths. All go through `datasets.load_dataset`. The outcome-log
            folder of a `carrot serve` gateway is read by `read_routing_logs` (served requests joined
            with their feedback; one split, "train").
        split: which split to read.
        streaming: read an `IterableDataset` batch by batch, never holding the raw rows whole
            (for the Hub; works on local copies too).
        prices: `{model: {"input": $/M tokens, "output": $/M tokens}}`, used when the data has no
            `prices.json` next to it (a `prices.json` in the data wins; pass `table.prices = ...` after to override).
        on_error: `"raise"` stops at the first bad row with a message naming it; `"skip"` leaves bad rows
            out, warns with their count, and lists them in `table.metadata["skipped"]`
            (`{"row", "key", "reason"}` each).
        batch_size: rows per Arrow batch.
        progress: show a tqdm bar over batches.

    Returns:
        RoutingTable with `scores`, `input_tokens`, `output_tokens` float32 `(n_prompts, n_models)`;
        a null score is NaN (not observed). Model columns are the struct columns found in the data.
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', not {on_error!r}.")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, not {batch_size!r}.")
    outcome_log = _outcome_log_folder(source)
    if outcome_log is not None:
        from .logs import read_routing_logs

        if split != "train":
            raise RoutingDataError(
                f"{outcome_log} is a gateway's outcome log, which has one split, 'train' (not {split!r}); "
                "cut a validation split with carrot_hub.data.split_table."
            )
        return read_routing_logs(outcome_log, on_error=on_error, prices=prices, split=split)
    # A throw-away cache for local sources (see open_dataset); Hub datasets use the normal cache.
    with tempfile.TemporaryDirectory(prefix="carrot-hub-data-") as cache_dir:
        description = str(source)
        try:
            with quiet_progress_bars(not progress):  # datasets' own "Generating ... split" bars
                dataset, prices_document, description = open_dataset(source, split=split, streaming=streaming, cache_dir=cache_dir)
                validator, parts = _read_batches(dataset, split, streaming, on_error, batch_size, progress)
        except (RoutingDataError, RoutingSourceError):
            raise
        except Exception as error:  # datasets' own errors name no file, line or column: find them
            raise explain_unreadable(source, description, error) from error
    if validator is None:
        raise RoutingDataError(f"Split {split!r} of {description} has no rows.")

    models = validator.models
    skipped = [row for part in parts for row in part.skipped]

    def stack(name):
        arrays = [getattr(part, name) for part in parts]
        return np.concatenate(arrays, axis=0) if arrays else np.zeros((0, len(models)), np.float32)

    metadata = {"source": description, "rows_read": validator.rows_read, "skipped": skipped}
    if os.path.isdir(description):  # a local folder: its card's title and caveats travel to routers' cards
        metadata["title"] = read_card_title(description)
        metadata["caveats"] = read_caveats(description)
    table_prices = None
    if prices_document is not None:
        table_prices = prices_document["prices"]
        metadata["prices_recorded_on"] = prices_document.get("recorded_on")
        metadata["prices_source"] = prices_document.get("source")
    elif prices is not None:
        table_prices = validate_prices(prices)
    if table_prices is not None:
        unpriced = [m for m in models if m not in table_prices]
        if unpriced:
            warnings.warn(f"The price table has no entry for {unpriced}; table.cost() will fail until they are priced.")
        table_prices = {m: table_prices[m] for m in models if m in table_prices}

    table = RoutingTable(
        prompts=[p for part in parts for p in part.prompts],
        prompt_ids=[k for part in parts for k in part.keys],
        tasks=[t for part in parts for t in part.tasks],
        models=list(models),
        scores=stack("scores"),
        input_tokens=stack("input_tokens"),
        output_tokens=stack("output_tokens"),
        prices=table_prices,
        split=split,
        metadata=metadata,
    )
    if skipped:
        shown = "; ".join(f"row {s['row']} ({s['reason']})" for s in skipped[:3])
        warnings.warn(
            f"Skipped {len(skipped)} of {validator.rows_read} rows of {description} [{split}]: {shown}"
            f"{' ...' if len(skipped) > 3 else ''}. The full list is in table.metadata['skipped'].",
            stacklevel=2,
        )
    if len(table) == 0:
        raise RoutingDataError(f"No valid rows in split {split!r} of {description} (all {validator.rows_read} skipped).")
    return table
