"""
What the `carrot` commands share, wherever they live (`cli.py`, `carrot serve`, `carrot collect`,
`carrot learn`, the training scripts): the errors that set the exit code (`UsageError`: 2,
`Failure`: 1), the `positive_int` option type, loading a router (`load_router`) and reading a
price table (`read_prices`), each failing with a one-line message.
"""

import argparse
import json
import math
import os
from pathlib import Path

from .hub_checks import HUB_ID


class UsageError(Exception):
    """Bad option value or input: exit code 2."""


class Failure(Exception):
    """Anything else that stops the command: exit code 1."""


def positive_int(text: str) -> int:
    """argparse type: a positive integer, with a one-line error otherwise."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0, with a one-line error otherwise."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a finite positive number, got {text}")
    return value


def non_negative_number(unit: str | None = None):
    """An argparse type: a finite number ≥ 0, its one-line error naming `unit` ("dollars", "seconds")."""
    of_unit = f" of {unit}" if unit else ""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a number{of_unit}, got {text!r}") from None
        if not math.isfinite(value) or value < 0:
            raise argparse.ArgumentTypeError(f"must be a finite number{of_unit} ≥ 0, got {text}")
        return value

    return parse


def load_router(
    spec: str | None, progress: bool = True, dtype: str = "float32", encoder: str | None = None, data: str | None = None
):
    """
    A router from a folder, a Hub id, or (None) the embedded default router of the packaged table
    `data` (default: RouterBench's) with an `encoder` of that kind, its encoder in `dtype` (see
    `carrot_hub.precision`); `Failure` if unavailable.
    """
    from .modeling_carrot import CarrotRouter
    from .precision import resolve_encoder_dtype
    from .progress import quiet_progress_bars

    if spec is not None and data is not None:
        raise UsageError("--data picks the default router of a packaged table; with --model, leave --data out.")
    if spec is None:
        from . import default_router
        from .data.packaged import DEFAULT_TABLE

        try:
            return default_router(progress=progress, dtype=dtype, encoder=encoder, data=data or DEFAULT_TABLE)
        except Exception as error:
            raise Failure(f"Cannot build the embedded default router: {first_line(error)}") from error
    dtype = resolve_encoder_dtype(dtype)
    path = Path(spec).expanduser()
    if path.is_dir() and (path / "LATEST").is_file() and not (path / "config.json").is_file():
        from .router_store import resolve_router_source

        try:
            path = Path(resolve_router_source(path)[0])  # a store of router revisions: its current one
        except FileNotFoundError as error:
            raise Failure(str(error)) from None
    if path.exists():
        if not (path / "config.json").is_file():
            raise Failure(f"{spec} is not a router folder: it has no config.json.")
        try:
            with quiet_progress_bars():
                return CarrotRouter.from_pretrained(path, dtype=dtype)
        except Exception as error:
            raise Failure(f"Cannot load the router in {spec}: {first_line(error)}") from error
    if not HUB_ID.match(spec):
        raise Failure(f"The router folder {spec} does not exist.")
    offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    try:
        with quiet_progress_bars():
            return CarrotRouter.from_pretrained(spec, dtype=dtype)
    except Exception as error:
        if offline:
            raise Failure(
                f"{spec} is not a local folder, and the Hub cannot be reached offline (HF_HUB_OFFLINE=1): "
                "download the router first, or pass a local folder."
            ) from error
        raise Failure(f"Cannot load the router {spec!r} from the Hub: {first_line(error)}") from error


def read_prices(text: str | None) -> dict | None:
    """`--prices`: inline JSON, or a JSON / YAML file; `UsageError` when unreadable."""
    if text is None:
        return None
    prices = read_mapping(text, "--prices", 'a non-empty mapping {"model": {"input": $/M, "output": $/M}}')
    if isinstance(prices.get("prices"), dict):
        prices = prices["prices"]  # a file may wrap the table as {"prices": {...}, "recorded_on": ...}
    if not prices:
        raise UsageError('--prices must be a non-empty mapping {"model": {"input": $/M, "output": $/M}}.')
    return prices


def read_mapping(text: str, option: str, what: str = "a non-empty mapping") -> dict:
    """An option given as inline JSON or as a JSON / YAML file, which must hold a mapping; `UsageError` otherwise."""
    stripped = text.strip()
    if stripped.startswith("{"):
        try:
            value = json.loads(stripped)
        except json.JSONDecodeError as error:
            raise UsageError(f"{option} is not valid JSON ({error.msg} at character {error.pos}).") from None
    else:
        path = Path(text).expanduser()
        try:
            content = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            reason = getattr(error, "strerror", None) or str(error)
            raise UsageError(f"Cannot read the {option.lstrip('-')} file {text}: {reason}.") from None
        try:
            if path.suffix.lower() in (".yaml", ".yml"):
                import yaml

                value = yaml.safe_load(content)
            else:
                value = json.loads(content)
        except Exception as error:
            raise UsageError(f"The {option.lstrip('-')} file {text} is not valid {path.suffix.lstrip('.').upper() or 'JSON'}: "
                             f"{first_line(error)}") from None
    if not isinstance(value, dict) or not value:
        raise UsageError(f"{option} must be {what}.")
    return value


def first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
