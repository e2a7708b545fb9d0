"""The `code` scorer runs answers in a limited child process: passes, failures, time and memory limits, no network."""

import asyncio
import os

import pytest

from carrot_hub.collect.code_execution import CodeScorer, extract_code
from carrot_hub.collect.contracts import ScoringInput
from carrot_hub.collect.scorers import build_scorer

pytestmark = pytest.mark.skipif(os.name != "posix", reason="resource limits and process groups are POSIX")


def run(answer, tests="pass", time_limit_s=5.0):
    scorer = build_scorer("code", ask=None, candidates=(), allow_code_execution=True)
    scorer.time_limit_s = time_limit_s
    return asyncio.run(scorer.score(ScoringInput("Write add(a, b).", answer, tests=tests)))


def test_extract_code_takes_the_last_fenced_block_else_the_whole_answer():
    assert extract_code("Here:\n```python\nx = 1\n```\nthen\n```\ny = 2\n```") == "y = 2\n"
    assert extract_code("def f(): return 1") == "def f(): return 1"


def test_passing_and_failing_code():
    assert run("```python\ndef add(a, b):\n    return a + b\n```", "assert add(2, 3) == 5").value == 1.0
    failed = run("```python\ndef add(a, b):\n    return a - b\n```", "assert add(2, 3) == 5")
    assert failed.value == 0.0 and "AssertionError" in failed.reason
    assert run("def add(a, b) return", "assert add(1, 1) == 2").value == 0.0  # a syntax error is a wrong answer


def test_time_and_memory_limits():
    slow = run("def add(a, b):\n    while True:\n        pass", "add(1, 2)", time_limit_s=1.0)
    assert slow.value == 0.0 and "timed out" in slow.reason
    big = run("x = bytearray(4 << 30)")
    assert big.value == 0.0 and "MemoryError" in big.reason


def test_no_network():
    result = run("import urllib.request\nurllib.request.urlopen('http://127.0.0.1:9', timeout=2)")
    assert result.value == 0.0 and "network access is disabled" in result.reason


def test_no_tests_or_no_answer_is_unscored():
    assert run("def add(a, b): return a + b", tests="").value is None
    assert run("").value is None
    assert CodeScorer.needs_tests and not CodeScorer.needs_reference
