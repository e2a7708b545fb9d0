"""Deterministic, seeded train / validation splits for data that comes without them."""

from __future__ import annotations

import numpy as np

from .routing_table import RoutingTable


def split_indices(n: int, validation_fraction: float, seed: int = 0, groups=None) -> tuple[np.ndarray, np.ndarray]:
    """
    `(train_rows, validation_rows)`, each sorted. With `groups` (one label per row), every group is split
    by the same fraction (rounded; a group of one goes to train), so tasks keep their proportions.
    The same `(n, fraction, seed, groups)` always gives the same split.
    """
    if not 0 < validation_fraction < 1:
        raise ValueError(f"validation_fraction must be in (0, 1), not {validation_fraction!r}.")
    rng = np.random.default_rng(seed)
    if groups is None:
        order = rng.permutation(n)
        n_validation = int(round(n * validation_fraction))
        if n_validation == 0 or n_validation == n:
            raise ValueError(f"{n} rows cannot be split with validation_fraction={validation_fraction}: one side would be empty.")
        return np.sort(order[n_validation:]), np.sort(order[:n_validation])
    groups = np.asarray(groups)
    if len(groups) != n:
        raise ValueError(f"groups has {len(groups)} labels for {n} rows.")
    validation = []
    for label in sorted(set(groups.tolist())):  # sorted: independent of row order
        members = np.flatnonzero(groups == label)
        members = members[rng.permutation(len(members))]
        take = int(round(len(members) * validation_fraction))
        take = min(take, len(members) - 1)
        validation.extend(members[:take].tolist())
    validation = np.sort(np.array(validation, dtype=np.int64))
    if len(validation) == 0:
        raise ValueError(f"{n} rows cannot be split with validation_fraction={validation_fraction}: validation would be empty.")
    train = np.setdiff1d(np.arange(n), validation)
    return train, validation


def split_table(
    table: RoutingTable, validation_fraction: float = 0.1, seed: int = 0, stratify_by_task: bool = False
) -> dict[str, RoutingTable]:
    """`{"train": ..., "validation": ...}`: a seeded split of `table`'s rows (by task when `stratify_by_task`)."""
    train, validation = split_indices(
        len(table), validation_fraction, seed=seed, groups=table.tasks if stratify_by_task else None
    )
    parts = {"train": table.subset(train), "validation": table.subset(validation)}
    for name, part in parts.items():
        part.split = name
        part.metadata["split_from"] = {"split": table.split, "validation_fraction": validation_fraction,
                                       "seed": seed, "stratify_by_task": stratify_by_task}
    return parts
