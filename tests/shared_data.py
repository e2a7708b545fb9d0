"""
Where the tests find the shared source data (the RouterBench CSVs, ZeroEval's parquet files):
`../shared/data` beside the project root, where CI provides it (the repository at /work/main, the
data at /work/shared/data), or the folder `$CARROT_SHARED_DATA` names (a clone elsewhere). Under CI
(`$CARROT_CI` set by `.ci/run`, or the `$CI` most CI services set) a missing folder fails the test
instead of skipping it, so CI cannot silently stop running these tests.
"""

import os
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    """`$CARROT_SHARED_DATA`, else `../shared/data` relative to the project root."""
    return Path(os.environ.get("CARROT_SHARED_DATA") or PROJECT_ROOT.parent / "shared" / "data")


def running_in_ci() -> bool:
    return any(os.environ.get(name, "").lower() not in ("", "0", "false") for name in ("CARROT_CI", "CI"))


def require_shared_data(name: str) -> Path:
    """The shared data set `name`; skips the test when it is missing, or fails it under CI."""
    folder = shared_data_dir() / name
    if folder.is_dir():
        return folder
    message = (f"the shared data {folder} is missing: CI provides it as ../shared/data beside the project; "
               "elsewhere set CARROT_SHARED_DATA to the folder holding routerbench-0shot and zeroeval-2024")
    if running_in_ci():
        pytest.fail(message)
    pytest.skip(message)


def routerbench_csv_slice(destination: Path, first_rows: int) -> Path:
    """
    A slice of the real RouterBench CSVs in `destination`: the first `first_rows` rows of each file,
    and in ARC's train file also both rows of a duplicated sample (each holding some models' results).
    """
    import numpy as np
    import pandas as pd

    destination.mkdir(parents=True, exist_ok=True)
    for path in require_shared_data("routerbench-0shot").glob("*.csv"):
        frame = pd.read_csv(path)
        keep = set(range(first_rows))
        if path.name == "arc_challenge_train.csv":
            twin = frame["sample_id"][frame["sample_id"].duplicated()].iloc[0]
            keep |= set(np.flatnonzero(frame["sample_id"] == twin).tolist())
        frame.iloc[sorted(keep)].to_csv(destination / path.name, index=False)
    return destination
