"""Silencing the progress bars of the libraries underneath (datasets, transformers, huggingface_hub).

`progress=False`, `--no-progress` and `--quiet` mean no bar at all, not only ours: datasets prints
"Generating train split" while it reads a local copy, transformers "Loading weights" and "Writing
model shards", huggingface_hub its upload bars.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def quiet_progress_bars(quiet: bool = True) -> Iterator[None]:
    """Within the block, the libraries' progress bars are off when `quiet` (their previous state comes back after)."""
    if not quiet:
        yield
        return
    import datasets
    import huggingface_hub.utils as hub_utils
    from transformers.utils import logging as transformers_logging

    switches = [
        (datasets.is_progress_bar_enabled, datasets.disable_progress_bars, datasets.enable_progress_bars),
        (transformers_logging.is_progress_bar_enabled, transformers_logging.disable_progress_bar,
         transformers_logging.enable_progress_bar),
        (lambda: not hub_utils.are_progress_bars_disabled(), hub_utils.disable_progress_bars,
         hub_utils.enable_progress_bars),
    ]
    were_enabled = [is_enabled() for is_enabled, _, _ in switches]
    for _, disable, _ in switches:
        disable()
    try:
        yield
    finally:
        for enabled, (_, _, enable) in zip(were_enabled, switches):
            if enabled:
                enable()


__all__ = ["quiet_progress_bars"]
