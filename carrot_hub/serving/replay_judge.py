"""The replay judge: a judge upstream that grades from a record instead of reading the answer.

`carrot collect`'s `judge:<candidate>` scorer (and `carrot serve --explore`, which uses it) asks the
judge with a rubric (`carrot_hub.collect.judge.rubric`) that quotes the user's request and the
answer, and reads the judge's last "Score: N" line. Here the rubric request is taken apart again
(`rubric_fields`), the request is found in a `ReplayRecord` as its prompt, the answer as one of the
recorded answers to it, and the grade is that answer's recorded score (ZeroEval's 0/1 for the 2024
table): "Score: 10" for 1, "Score: 0" for 0. The gateway's judge path runs unchanged and its labels
are the benchmark's own ground truth, so a simulation measures the routing, not a judge's mistakes.

A rubric request whose prompt is not in the record, whose answer is none of the recorded answers,
or whose matching answers were scored differently gets a reply without a grade, which the judge
scorer records as unscored with that reply as the reason.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache

# The replayed reply is shorter than a real judge's, so its usage is billed as JUDGE_REPLY_TOKENS output tokens.
from ..collect.judge import JUDGE_REPLY_TOKENS, MAX_GRADE, rubric, rubric_tokens


@dataclass(frozen=True)
class RubricFields:
    """What a rubric request quotes: the user's request, the answer, and the reference (None without one)."""

    prompt: str
    answer: str
    reference: str | None


@cache
def _rubric_parts(with_reference: bool) -> tuple[list[str], list[str]]:
    """The rubric's literal pieces and, between them, the names of the fields it quotes, in order."""
    fields = ("prompt", "answer", "reference") if with_reference else ("prompt", "answer")
    filled = rubric(with_reference).format(**{name: f"\x00{name}\x00" for name in fields})
    parts = re.split("\x00(" + "|".join(fields) + ")\x00", filled)
    return parts[0::2], parts[1::2]


@cache
def _rest_pattern(with_reference: bool) -> re.Pattern:
    """A regex for the rubric after its first field: the other fields as named groups, up to the end."""
    literals, names = _rubric_parts(with_reference)
    pattern = re.escape(literals[1])
    for name, literal in zip(names[1:], literals[2:]):
        pattern += f"(?P<{name}>.*?)" + re.escape(literal)
    return re.compile(pattern + r"\Z", re.DOTALL)


def rubric_readings(text: str):
    """
    Every way `text` (a judge request's user message) reads as a filled rubric, as `RubricFields`,
    the shortest first field first: a quoted request may itself contain the rubric's next heading,
    so the caller keeps the reading whose request it knows. Nothing when `text` is not a rubric.
    """
    if not isinstance(text, str):
        return
    for with_reference in (False, True):
        literals, names = _rubric_parts(with_reference)
        if not text.startswith(literals[0]):
            continue
        rest, position = _rest_pattern(with_reference), len(literals[0])
        while (cut := text.find(literals[1], position)) >= 0:
            match = rest.match(text, cut)
            if match is not None:
                fields = {names[0]: text[len(literals[0]):cut], **match.groupdict()}
                yield RubricFields(fields["prompt"], fields["answer"], fields.get("reference"))
            position = cut + 1


def rubric_fields(text: str) -> RubricFields | None:
    """The first reading of `text` as a filled judge rubric (see `rubric_readings`), or None when it is not one."""
    return next(rubric_readings(text), None)


def replay_grade(record, text: str) -> tuple[str, dict] | None:
    """
    The judge's reply to a rubric request (`text`, its user message) and its `usage`, from `record`
    (a `ReplayRecord` with scores), None when `text` is not a rubric:
    "Score: 10" / "Score: 0" for the recorded 1 / 0 of the quoted answer, or a reply without a grade
    saying why there is none. Usage: the prompt's and the answer's recorded tokens plus the rubric's,
    and `JUDGE_REPLY_TOKENS` for the reply.
    """
    readings = list(rubric_readings(text))
    if not readings:
        return None
    # the reading whose request the record knows (a request quoting the rubric's heading reads several ways)
    fields = next((r for r in readings if r.prompt in record.keys_of_prompt), readings[0])
    graded = record.grade(fields.prompt, fields.answer)
    if isinstance(graded, str):  # why there is no grade
        return f"No grade can be replayed: {graded}.", {"prompt_tokens": rubric_tokens(), "completion_tokens": JUDGE_REPLY_TOKENS}
    score, answer = graded
    grade = round(score * MAX_GRADE)
    verdict = "correct" if score >= 0.5 else "wrong"
    usage = {"prompt_tokens": (answer.input_tokens or 0) + (answer.output_tokens or 0) + rubric_tokens(),
             "completion_tokens": JUDGE_REPLY_TOKENS}
    return (f"The recorded evaluation of this answer marked it {verdict} (recorded score {score:g}).\n"
            f"Score: {grade}"), usage
