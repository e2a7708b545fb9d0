"""The `math` scorer: is the final answer mathematically the reference? Decided by Hugging Face's `math-verify`.

`math-verify` (PyPI, the `math` extra) parses LaTeX and plain expressions into sympy and compares
them as values: `\\frac{1}{2}`, `0.5` and `1/2` are one answer, so are `x \\in [1, 2)` and `[1,2)`,
or `{1, 2}` and `{2, 1}`. We hand it the answer's marked final answer when the reply has one (a JSON
`answer` field, `####`, `\\boxed{}`, "the answer is"), else the whole reply, where it takes the last
`\\boxed{}` or expression itself.

Its parsing and comparing are time-limited with `signal.alarm`, which works only in the main thread;
called from another thread the limits are off (math-verify's own rule), so a pathological expression
can then take long.
"""

from __future__ import annotations

import re
import threading

from .answer_extraction import final_answer_span
from .contracts import Score, ScoringInput
from .scorers import ScorerSpecError, unscorable

TIMEOUT_S = 5  # per parse and per comparison, in the main thread
_WORD = re.compile(r"(?<![\\\w])[A-Za-z]{2,}")  # a word, not a LaTeX command


def _timeout() -> int | None:
    return TIMEOUT_S if threading.current_thread() is threading.main_thread() else None


def _parse(text: str):
    """
    math-verify's reading of `text`: a list of sympy objects and strings, empty when it found nothing.
    Text without `$` is read as LaTeX math first (`[1, 2)` is an interval, `\\{1, 2\\}` a set), unless
    it holds words ("18 dollars"), which only the plain-expression reading skips over.
    """
    from math_verify import parse

    def read(candidate: str):
        return parse(candidate, fallback_mode="no_fallback", parsing_timeout=_timeout())

    if "$" in text:
        return read(text)
    if _WORD.search(text):
        return read(text)
    return read(f"${text}$") or read(text)


class MathScorer:
    """1 when `math-verify` finds the final answer equal to the reference, else 0."""

    name = "math"
    needs_reference = True
    needs_tests = False

    def __init__(self):
        try:
            import math_verify  # noqa: F401
        except ImportError:
            raise ScorerSpecError(
                "The math scorer needs the math-verify package: pip install 'carrot_hub[collect]'."
            ) from None

    async def score(self, item: ScoringInput) -> Score:
        from math_verify import verify

        if (skip := unscorable(item, self.name, self.needs_reference)) is not None:
            return skip
        gold = _parse(item.reference)
        if not gold:
            return Score(None, f"math-verify cannot read the reference {item.reference[:40]!r}", scorer=self.name)
        span = final_answer_span(item.answer)
        answer = _parse(span.text) if span.marked else []
        if not answer:
            answer = _parse(item.answer)
        if not answer:
            return Score(0.0, f"no final answer math-verify can read ({span.found_by})", scorer=self.name)
        correct = verify(gold, answer, timeout_seconds=_timeout())
        return Score(float(correct), f"answer {str(answer[-1])[:80]!r} ({span.found_by})", scorer=self.name)
