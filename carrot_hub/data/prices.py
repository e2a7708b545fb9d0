"""Price tables as data: `prices.json` files next to a routing data set.

Format (US dollars per million tokens):
    {"recorded_on": "YYYY-MM-DD", "source": "where the prices come from",
     "prices": {"<model>": {"input": 0.15, "output": 0.6}, ...}}
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path

from ..errors import BadInputError

PRICES_FILENAME = "prices.json"


def validate_prices(prices: Mapping, where: str = "prices") -> dict[str, dict[str, float]]:
    """
    `{model: {"input": x, "output": y}}` with finite, non-negative floats, and an optional
    `"cached_input"` (US$ per million cached input tokens); errors name the bad entry.
    """
    if not isinstance(prices, Mapping):
        raise ValueError(f"{where} must map model -> {{'input': $/M, 'output': $/M}}, got {type(prices).__name__}.")
    clean = {}
    for model, entry in prices.items():
        if not isinstance(entry, Mapping) or "input" not in entry or "output" not in entry:
            raise ValueError(f"{where}[{model!r}] must be {{'input': $/M tokens, 'output': $/M tokens}}, got {entry!r}.")
        pair = {}
        for side in ("input", "output", "cached_input"):
            if side not in entry:
                continue
            value = entry[side]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"{where}[{model!r}][{side!r}] = {value!r}: a price must be a finite number >= 0.")
            pair[side] = float(value)
        clean[str(model)] = pair
    return clean


def read_prices_file(path: str | os.PathLike) -> dict:
    """
    Read and validate a prices.json; returns `{"recorded_on", "source", "prices"}`. A file that cannot
    be read or is wrong raises `BadInputError` (bad input: exit code 2 on the command line).
    """
    path = Path(path)
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise BadInputError(f"{path} is not valid JSON ({error.msg} at line {error.lineno}).") from None
    except UnicodeDecodeError:
        raise BadInputError(f"{path} is not UTF-8 text; write the price table as JSON.") from None
    except RecursionError:
        raise BadInputError(f"{path} is nested too deeply to be a price table.") from None
    if not isinstance(document, dict) or "prices" not in document:
        raise BadInputError(f"{path} must be an object with a 'prices' entry: {{'recorded_on', 'source', 'prices'}}.")
    try:
        prices = validate_prices(document["prices"], where=f"{path.name}: prices")
    except ValueError as error:
        raise BadInputError(f"{path}: {error}") from None
    return {"recorded_on": document.get("recorded_on"), "source": document.get("source"), "prices": prices}


def write_prices_file(path: str | os.PathLike, prices: Mapping, recorded_on: str | None, source: str | None) -> Path:
    """Write a validated prices.json (sorted, indented: it is meant to be read by people too)."""
    path = Path(path)
    document = {"recorded_on": recorded_on, "source": source, "prices": validate_prices(prices)}
    path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    return path
