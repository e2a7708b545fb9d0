"""The `judge:<candidate>` scorer: another LLM, reached as an upstream, grades the answer with a packaged rubric.

The rubric (`rubrics/judge_with_reference.md` when the row has a reference, else
`rubrics/judge_without_reference.md`) asks the judge for a short justification and a last line
"Score: N" with N from 0 to 10; the score is N / 10. The judge is asked greedily (temperature 0).
What the judge's call cost is recorded in `Score.judge_cost` and `Score.judge_model`, apart from the
judged model's own cost. A reply without a readable grade, or a judge whose upstream failed every
retry, leaves the answer unscored with the reason, never 0.
"""

from __future__ import annotations

import re
from functools import cache
from importlib import resources

from .contracts import AskFn, Score, ScoringInput
from .scorers import unscorable

JUDGE_SAMPLING = {"temperature": 0, "max_tokens": 400}
MAX_GRADE = 10
_GRADE = re.compile(r"score\W{0,3}\s*[:=]?\s*\**\s*(\d+(?:\.\d+)?)\s*(?:/\s*10)?", re.IGNORECASE)


@cache
def rubric(with_reference: bool) -> str:
    """The packaged rubric prompt, with `{prompt}`, `{answer}` (and `{reference}`) to fill."""
    name = "judge_with_reference.md" if with_reference else "judge_without_reference.md"
    return (resources.files(__package__) / "rubrics" / name).read_text(encoding="utf-8")


CHARS_PER_TOKEN = 4  # the rubric's own words have no token count of their own: ~4 characters per token
# A judge's typical reply: the rubric asks for "a short justification (at most three sentences)" and the grade.
JUDGE_REPLY_TOKENS = 80


@cache
def rubric_tokens(with_reference: bool = False) -> int:
    """The rubric's own words (its fields left empty) in tokens, estimated at `CHARS_PER_TOKEN` characters each."""
    fields = {"prompt": "", "answer": "", **({"reference": ""} if with_reference else {})}
    return -(-len(rubric(with_reference).format(**fields)) // CHARS_PER_TOKEN)


def judge_request(item: ScoringInput) -> list[dict]:
    """The chat messages that ask the judge to grade `item`."""
    request = item.prompt
    if len(item.messages) > 1:  # a conversation: show the judge all of it
        request = "\n\n".join(f"{m.get('role', 'user')}: {m.get('content', '')}" for m in item.messages)
    with_reference = item.reference is not None and bool(item.reference.strip())
    fields = {"prompt": request, "answer": item.answer}
    if with_reference:
        fields["reference"] = item.reference
    return [{"role": "user", "content": rubric(with_reference).format(**fields)}]


def parse_grade(reply: str) -> float | None:
    """The last "Score: N" of the judge's reply as N / 10, None when there is none in 0..10."""
    grades = _GRADE.findall(reply or "")
    if not grades:
        return None
    grade = float(grades[-1])
    return grade / MAX_GRADE if 0 <= grade <= MAX_GRADE else None


class JudgeScorer:
    """An LLM judge (the upstream `judge`) grading answers in [0, 1]; its cost is kept apart."""

    needs_reference = False  # graded against the reference when the row has one
    needs_tests = False

    def __init__(self, judge: str, ask: AskFn):
        self.judge, self.ask = judge, ask
        self.name = f"judge:{judge}"

    async def score(self, item: ScoringInput) -> Score:
        from ..serving.upstreams import UpstreamFailure

        if (skip := unscorable(item, self.name, needs_reference=False)) is not None:
            return skip
        try:
            reply = await self.ask(self.judge, judge_request(item), dict(JUDGE_SAMPLING))
        except UpstreamFailure as failure:
            return Score(None, f"the judge {self.judge!r} failed: {str(failure)[:200]}", scorer=self.name,
                         judge_model=self.judge)
        cost = reply.cost or 0.0
        grade = parse_grade(reply.text)
        if grade is None:
            return Score(None, f"the judge's reply has no 'Score: N' line: {reply.text[-120:]!r}",
                         scorer=self.name, judge_model=self.judge, judge_cost=cost)
        return Score(grade, f"judge grade {grade * MAX_GRADE:g}/10", scorer=self.name,
                     judge_model=self.judge, judge_cost=cost)
