"""Scorers: turn one candidate's answer into a `Score` in [0, 1], chosen per task by a spec string.

    specs = parse_scorer_specs(["gsm8k=number", "default=judge:gpt-4o"])   # {"gsm8k": "number", "default": ...}
    scorers = build_scorers(specs, ask=ask, candidates=upstreams, allow_code_execution=False)
    score = await scorer_for_task(scorers, "gsm8k").score(ScoringInput(prompt, answer, reference="18"))

| spec | what it compares | needs |
|---|---|---|
| `exact` | the final answer and the reference as normalised strings (`answer_matching.normalise_exact`) | reference |
| `number` | the final numeric answer, GSM8K style (commas, `$`, units, `####`, a trailing period) | reference |
| `choice` | the multiple-choice letter, or an option's text, against the reference's letter | reference |
| `math` | final-answer equivalence by the `math-verify` library (LaTeX, fractions, sets, intervals) | reference |
| `code` | the answer's code run against the row's tests in a child process (`code_execution.py`) | tests, `--allow-code-execution` |
| `judge:<candidate>` | an LLM judge reached as the upstream `<candidate>`, with a packaged rubric (`judge.py`) | an upstream |

The final answer is found by `answer_extraction.final_answer_span` (a JSON `answer` field, `####`,
`\\boxed{}`, "the answer is"). An answer that cannot be scored (empty, a refusal, no reference, a
judge reply without a score) gets `Score(value=None, reason=...)`: unscored, never 0. An answer that
was given but is wrong, or gives no number where a number was asked, is a 0 with its reason.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass

from ..errors import BadInputError
from .answer_extraction import final_answer_span, is_empty, is_refusal
from .answer_matching import (
    answer_exact,
    answer_number,
    choice_letter,
    normalise_exact,
    parse_number,
    prompt_options,
    reference_choice,
    same_number,
)
from .contracts import AskFn, Score, Scorer, ScoringInput

DEFAULT_TASK = "default"  # the task key a bare spec ("number") and unlisted tasks fall to
REFERENCE_SCORERS = ("exact", "number", "choice", "math")
SCORER_NAMES = (*REFERENCE_SCORERS, "code", "judge:<candidate>")


class ScorerSpecError(BadInputError):
    """A `--scorer` spec that cannot be used: unknown, a judge that is not an upstream, `code` not allowed, rows it cannot score."""


def parse_scorer_specs(specs: Sequence[str]) -> dict[str, str]:
    """
    `["gsm8k=number", "default=judge:gpt-4o"]` -> `{"gsm8k": "number", "default": "judge:gpt-4o"}`.
    A spec without `TASK=` is the default's. Each spec is checked by name here (`build_scorer` checks
    what needs the upstreams); a task given twice is an error.
    """
    parsed: dict[str, str] = {}
    for raw in specs:
        task, sep, spec = raw.partition("=")
        task, spec = (task.strip(), spec.strip()) if sep else (DEFAULT_TASK, raw.strip())
        if not task or not spec:
            raise ScorerSpecError(f"Scorer {raw!r} is incomplete: write TASK=SCORER (e.g. gsm8k=number) or SCORER alone.")
        check_scorer_name(spec)
        if task in parsed:
            raise ScorerSpecError(f"Task {task!r} is given two scorers ({parsed[task]!r} and {spec!r}): keep one.")
        parsed[task] = spec
    return parsed


def check_scorer_name(spec: str) -> None:
    """Raise `ScorerSpecError` unless `spec` names a known scorer (`judge:` needs a candidate name)."""
    if spec in REFERENCE_SCORERS or spec == "code":
        return
    if spec.startswith("judge:") and spec[len("judge:"):].strip():
        return
    hint = " (name the judge: judge:<candidate>)" if spec.rstrip(":") == "judge" else ""
    raise ScorerSpecError(f"Unknown scorer {spec!r}{hint}: choose one of {', '.join(SCORER_NAMES)}.")


def build_scorer(
    spec: str, *, ask: AskFn | None, candidates: Collection[str], allow_code_execution: bool
) -> Scorer:
    """
    The scorer `spec` names. `candidates` are the upstream names a judge may be; `ask` calls them
    (None where no upstream can be reached: then a judge is refused). `code` is refused unless
    `allow_code_execution`. Every refusal is a one-line `ScorerSpecError`.
    """
    check_scorer_name(spec)
    if spec == "exact":
        return ExactScorer()
    if spec == "number":
        return NumberScorer()
    if spec == "choice":
        return ChoiceScorer()
    if spec == "math":
        from .math_scorer import MathScorer

        return MathScorer()
    if spec == "code":
        if not allow_code_execution:
            raise ScorerSpecError(
                "The code scorer runs the answers' code on this machine: pass --allow-code-execution "
                "(allow_code_execution=True) to permit it; it is not a security sandbox."
            )
        from .code_execution import CodeScorer

        return CodeScorer()
    judge = spec[len("judge:"):].strip()
    if judge not in candidates:
        known = ", ".join(sorted(candidates)) or "none"
        raise ScorerSpecError(f"The judge {judge!r} is not an upstream (upstreams: {known}): add it to the upstreams file.")
    if ask is None:
        raise ScorerSpecError(f"The judge {judge!r} needs an upstream client to be asked through; none was given.")
    from .judge import JudgeScorer

    return JudgeScorer(judge, ask)


def build_scorers(
    specs: Mapping[str, str], *, ask: AskFn | None, candidates: Collection[str], allow_code_execution: bool
) -> dict[str, Scorer]:
    """`{task: spec}` -> `{task: Scorer}`; tasks sharing a spec share one scorer."""
    built: dict[str, Scorer] = {}
    for spec in dict.fromkeys(specs.values()):
        built[spec] = build_scorer(spec, ask=ask, candidates=candidates, allow_code_execution=allow_code_execution)
    return {task: built[spec] for task, spec in specs.items()}


def scorer_for_task(scorers: Mapping[str, Scorer], task: str | None) -> Scorer:
    """The scorer of `task`, else the default's; a `ScorerSpecError` naming the task when there is neither."""
    if task is not None and task in scorers:
        return scorers[task]
    if DEFAULT_TASK in scorers:
        return scorers[DEFAULT_TASK]
    raise ScorerSpecError(
        f"No scorer for task {task!r}: add --scorer {task or 'TASK'}=SCORER or a default (--scorer SCORER)."
    )


@dataclass(frozen=True)
class MissingInputs:
    """How many rows a scorer cannot score for want of a reference or of tests."""

    scorer: str
    task: str
    field: str  # "reference" or "tests"
    rows: int
    of: int

    def message(self) -> str:
        return (
            f"The {self.scorer!r} scorer of task {self.task!r} needs a {self.field}, and {self.rows} of "
            f"{self.of} rows have none: add a `{self.field}` column or choose a judge for this task."
        )


def count_missing_inputs(
    scorers: Mapping[str, Scorer], rows: Iterable[tuple[str | None, str | None, str | None]]
) -> list[MissingInputs]:
    """
    For rows given as `(task, reference, tests)`, count per task the rows whose scorer needs a
    reference (or tests) they lack. Empty list: every row can be scored.
    """
    counts: dict[tuple[str, str, str], list[int]] = {}
    for task, reference, tests in rows:
        scorer = scorer_for_task(scorers, task)
        for field, needed, value in (("reference", scorer.needs_reference, reference),
                                     ("tests", scorer.needs_tests, tests)):
            if needed:
                tally = counts.setdefault((scorer.name, task or DEFAULT_TASK, field), [0, 0])
                tally[0] += is_empty(value)
                tally[1] += 1
    return [MissingInputs(name, task, field, missing, total)
            for (name, task, field), (missing, total) in counts.items() if missing]


def check_scorer_inputs(
    scorers: Mapping[str, Scorer], rows: Iterable[tuple[str | None, str | None, str | None]]
) -> None:
    """Raise a `ScorerSpecError` saying how many rows lack what their scorer needs (see `count_missing_inputs`)."""
    missing = count_missing_inputs(scorers, rows)
    if missing:
        raise ScorerSpecError(" ".join(item.message() for item in missing))


def unscorable(item: ScoringInput, scorer: str, needs_reference: bool) -> Score | None:
    """The unscored `Score` for an empty answer, a refusal or a missing reference; None when the answer can be scored."""
    if is_empty(item.answer):
        return Score(None, "empty answer", scorer=scorer)
    if is_refusal(item.answer):
        return Score(None, "the model refused to answer", scorer=scorer)
    if needs_reference and is_empty(item.reference):
        return Score(None, "no reference to compare with", scorer=scorer)
    return None


class ExactScorer:
    """1 when the final answer equals the reference as a normalised string (`normalise_exact`), else 0."""

    name = "exact"
    needs_reference = True
    needs_tests = False

    async def score(self, item: ScoringInput) -> Score:
        if (skip := unscorable(item, self.name, self.needs_reference)) is not None:
            return skip
        answer, span = answer_exact(item.answer)
        correct = answer == normalise_exact(item.reference)
        return Score(float(correct), f"answer {answer[:80]!r} ({span.found_by})", scorer=self.name)


class NumberScorer:
    """1 when the final numeric answer equals the reference's number (GSM8K style), else 0."""

    name = "number"
    needs_reference = True
    needs_tests = False

    async def score(self, item: ScoringInput) -> Score:
        if (skip := unscorable(item, self.name, self.needs_reference)) is not None:
            return skip
        reference_span = final_answer_span(item.reference)  # "#### 72" or a worked solution ending in one
        expected = parse_number(reference_span.text, last=not reference_span.marked)
        if expected is None:
            return Score(None, f"the reference {item.reference[:40]!r} holds no number", scorer=self.name)
        value, span = answer_number(item.answer)
        if value is None:
            return Score(0.0, f"no number in the answer ({span.found_by})", scorer=self.name)
        return Score(float(same_number(value, expected)), f"answer {value:g} ({span.found_by})", scorer=self.name)


class ChoiceScorer:
    """1 when the answer picks the reference's option (by letter or by the option's text), else 0."""

    name = "choice"
    needs_reference = True
    needs_tests = False

    async def score(self, item: ScoringInput) -> Score:
        if (skip := unscorable(item, self.name, self.needs_reference)) is not None:
            return skip
        options = prompt_options(item.prompt)
        expected = reference_choice(item.reference, options)
        span = final_answer_span(item.answer)
        picked = choice_letter(span.text, options, whole_reply=not span.marked)
        if expected is None:  # the reference is free text and the prompt lists no options: compare wording
            picked_text = options.get(picked, span.text) if picked else span.text
            same = normalise_exact(picked_text, prose=True).casefold() == normalise_exact(item.reference).casefold()
            return Score(float(same), f"answer {picked_text[:80]!r} ({span.found_by})", scorer=self.name)
        if picked is None:
            return Score(0.0, f"no option picked ({span.found_by})", scorer=self.name)
        return Score(float(picked == expected), f"picked {picked} ({span.found_by})", scorer=self.name)
