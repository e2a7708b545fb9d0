"""The test suite's own rules: shared helpers live in helper modules, not in other test files, and the
tests that need the shared data find it beside the project and fail under CI when it is missing."""

import ast
from pathlib import Path

import pytest

from . import shared_data

TESTS = Path(__file__).parent


def test_no_test_file_imports_from_another_test_file():
    offenders = []
    for path in sorted(TESTS.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module:
                module = node.module.removeprefix("tests.") if not node.level else node.module
                if module.split(".")[0].startswith("test_"):
                    offenders.append(f"{path.name}: from {'.' * node.level}{node.module}")
    assert offenders == [], "move shared helpers into a helper module (e.g. cli_helpers.py): " + "; ".join(offenders)


def test_shared_data_is_found_beside_the_project_or_where_the_variable_says(monkeypatch, tmp_path):
    monkeypatch.delenv("CARROT_SHARED_DATA", raising=False)
    assert shared_data.shared_data_dir() == shared_data.PROJECT_ROOT.parent / "shared" / "data"
    (tmp_path / "routerbench-0shot").mkdir()
    monkeypatch.setenv("CARROT_SHARED_DATA", str(tmp_path))
    assert shared_data.require_shared_data("routerbench-0shot") == tmp_path / "routerbench-0shot"


@pytest.mark.parametrize("ci, outcome", [({"CARROT_CI": "1"}, pytest.fail.Exception), ({"CI": "true"}, pytest.fail.Exception),
                                          ({}, pytest.skip.Exception)])
def test_missing_shared_data_fails_under_ci_and_skips_elsewhere(monkeypatch, tmp_path, ci, outcome):
    for name in ("CARROT_CI", "CI"):
        monkeypatch.delenv(name, raising=False)
    for name, value in ci.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("CARROT_SHARED_DATA", str(tmp_path))
    with pytest.raises(outcome, match="CARROT_SHARED_DATA"):
        shared_data.require_shared_data("zeroeval-2024")
