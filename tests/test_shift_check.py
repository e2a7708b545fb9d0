"""The leave-one-task-out shift check (scripts/shift_check.py) on the packaged ZeroEval table."""

import importlib.util
import json
from pathlib import Path

import pytest

from carrot_hub.data.packaged import packaged_table_dir

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "shift_check.py"


@pytest.mark.slow
def test_shift_check_scores_each_unseen_task_against_its_own_zero_router(tmp_path):
    spec = importlib.util.spec_from_file_location("shift_check", SCRIPT)
    shift_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(shift_check)
    out = tmp_path / "shift.json"
    assert shift_check.main(["--data", str(packaged_table_dir("zeroeval-2024")), "--out", str(out)]) == 0
    results = json.loads(out.read_text())
    assert set(results["per_task"]) == {"gsm8k", "cruxeval"}
    for task in results["per_task"].values():
        aiq = task["aiq_shifted"]
        assert 0.5 < aiq["zero_router"] < 1 and 0.5 < aiq["router"] < 1
    assert results["mean"]["support_auroc"] > 0.9  # the other task's prompts are told apart
    assert results["mean"]["aiq_shifted_zero_router"] == pytest.approx(
        sum(t["aiq_shifted"]["zero_router"] for t in results["per_task"].values()) / 2)
