"""The scorers of `carrot collect`: spec parsing, building, and the exact / number / choice scorers."""

import asyncio

import pytest

from carrot_hub.collect.answer_extraction import (
    BOXED,
    HASH_MARK,
    JSON_FIELD,
    WHOLE_REPLY,
    final_answer_span,
    is_refusal,
)
from carrot_hub.collect.answer_matching import choice_letter, normalise_exact, parse_number, prompt_options
from carrot_hub.collect.contracts import ScoringInput
from carrot_hub.collect.scorers import (
    DEFAULT_TASK,
    ScorerSpecError,
    build_scorer,
    build_scorers,
    check_scorer_inputs,
    count_missing_inputs,
    parse_scorer_specs,
    scorer_for_task,
)
from carrot_hub.errors import BadInputError


def score(spec, answer, reference=None, prompt="q", **kwargs):
    scorer = build_scorer(spec, ask=None, candidates=(), allow_code_execution=False)
    return asyncio.run(scorer.score(ScoringInput(prompt=prompt, answer=answer, reference=reference, **kwargs)))


# --- specs ------------------------------------------------------------------------------------------

def test_parse_scorer_specs_maps_tasks_and_a_bare_spec_to_default():
    assert parse_scorer_specs(["gsm8k=number", "default=judge:gpt-4o"]) == {"gsm8k": "number", "default": "judge:gpt-4o"}
    assert parse_scorer_specs(["number"]) == {DEFAULT_TASK: "number"}
    assert parse_scorer_specs([" crux = exact "]) == {"crux": "exact"}


@pytest.mark.parametrize("specs, words", [
    (["gsm8k=numbr"], "Unknown scorer 'numbr'"),
    (["judge"], "judge:<candidate>"),
    (["judge:"], "judge:<candidate>"),
    (["gsm8k="], "incomplete"),
    (["a=number", "a=exact"], "two scorers"),
])
def test_parse_scorer_specs_refuses_bad_specs_in_one_line(specs, words):
    with pytest.raises(ScorerSpecError, match="^[^\n]*$") as error:
        parse_scorer_specs(specs)
    assert words in str(error.value)
    assert isinstance(error.value, BadInputError)


def test_build_scorer_refuses_a_judge_that_is_not_an_upstream_and_code_without_the_flag():
    with pytest.raises(ScorerSpecError, match="'gpt-4o' is not an upstream"):
        build_scorer("judge:gpt-4o", ask=None, candidates=["a", "b"], allow_code_execution=False)
    with pytest.raises(ScorerSpecError, match="--allow-code-execution"):
        build_scorer("code", ask=None, candidates=[], allow_code_execution=False)


def test_build_scorers_shares_one_scorer_per_spec_and_falls_back_to_default():
    scorers = build_scorers({"a": "number", "b": "number", DEFAULT_TASK: "exact"}, ask=None, candidates=(),
                            allow_code_execution=False)
    assert scorers["a"] is scorers["b"]
    assert scorer_for_task(scorers, "c").name == "exact"
    with pytest.raises(ScorerSpecError, match="No scorer for task 'c'"):
        scorer_for_task({"a": scorers["a"]}, "c")


def test_missing_references_are_counted_per_task():
    scorers = build_scorers({"gsm8k": "number", DEFAULT_TASK: "exact"}, ask=None, candidates=(),
                            allow_code_execution=False)
    rows = [("gsm8k", "18", None), ("gsm8k", None, None), ("gsm8k", " ", None), ("other", None, None)]
    missing = {(m.task, m.rows, m.of) for m in count_missing_inputs(scorers, rows)}
    assert missing == {("gsm8k", 2, 3), ("other", 1, 1)}
    with pytest.raises(ScorerSpecError, match="2 of 3 rows have none"):
        check_scorer_inputs(scorers, rows)
    check_scorer_inputs(scorers, [("gsm8k", "1", None)])


# --- finding the final answer ------------------------------------------------------------------------

def test_final_answer_span_reads_each_mark():
    assert final_answer_span('```json\n{"reasoning": "it\'s 2+2", "answer": "4"}\n```') .text == "4"
    assert final_answer_span('{"reasoning": "a \\\' quote", "answer": 7}').found_by == JSON_FIELD
    assert final_answer_span('{"reasoning": "broken "quote" here", "answer": "12 apples"}').text == "12 apples"
    assert final_answer_span("work...\n#### 1,234").found_by == HASH_MARK
    assert final_answer_span("so $\\boxed{\\frac{1}{2}}$.").text == "\\frac{1}{2}"
    assert final_answer_span("so $\\boxed{\\frac{1}{2}}$.").found_by == BOXED
    assert final_answer_span("Thus, the answer is 42.").text == "42."
    assert final_answer_span("just 42").found_by == WHOLE_REPLY
    empty = final_answer_span('{"answer": ""}')
    assert (empty.text, empty.literal) == ("", True)


def test_refusals_are_recognised_by_their_opening_only():
    assert is_refusal("I'm sorry, but I can't help with that.")
    assert is_refusal("I cannot assist with this request.")
    assert not is_refusal("First, 3 + 4 = 7. I cannot simplify this further, so the answer is 7.")


# --- number -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, value", [
    ("18", 18), ("$1,234.50 per day.", 1234.5), ("-5 degrees", -5), ("3/4", 0.75), ("\\frac{3}{4}", 0.75),
    ("18.", 18), ("50%", 50), ("1{,}000", 1000), ("no digits", None),
])
def test_parse_number(text, value):
    assert parse_number(text) == value


@pytest.mark.parametrize("answer, value", [
    ('{"reasoning": "9 eggs x $2", "answer": "$18"}', 1.0),
    ('{"reasoning": "9 eggs x $2", "answer": "18 dollars (9 x 2)"}', 1.0),
    ("Janet sells 9 eggs at $2 each.\n#### 18", 1.0),
    ("She makes $\\boxed{18}$ dollars.", 1.0),
    ("9 * 2 = 18, so the answer is 18.", 1.0),
    ("9 eggs, 2 dollars each: she makes 18.", 1.0),  # unmarked: the last number
    ('{"answer": "16"}', 0.0),
])
def test_number_scorer(answer, value):
    assert score("number", answer, reference="18").value == value


def test_number_scorer_reads_a_gsm8k_worked_reference():
    assert score("number", "#### 72", reference="48 + 24 = 72\n#### 72").value == 1.0


@pytest.mark.parametrize("answer, reference, reason", [
    ("", "18", "empty"), ("   ", "18", "empty"), ("I'm sorry, but I can't help with that.", "18", "refused"),
    ("18", None, "no reference"), ("18", "n/a", "holds no number"),
])
def test_number_scorer_leaves_unscorable_answers_unscored(answer, reference, reason):
    result = score("number", answer, reference=reference)
    assert result.value is None and reason in result.reason and result.scorer == "number"


def test_an_answer_with_no_number_is_wrong_not_unscored():
    result = score("number", "I think it is many.", reference="18")
    assert result.value == 0.0 and "no number" in result.reason


# --- exact --------------------------------------------------------------------------------------------

def test_normalise_exact_drops_outer_space_and_quotes_and_writes_line_breaks_as_escapes():
    assert normalise_exact("  'abc' ") == "abc"
    assert normalise_exact('"abc"') == normalise_exact("`abc`") == "abc"
    assert normalise_exact("' a  b '") == " a  b "
    assert normalise_exact("'ABC'") != normalise_exact("abc")
    assert normalise_exact("Paris.", prose=True) == "Paris"
    assert normalise_exact("a\nb", literal=True) == normalise_exact("'a\\nb'") == "a\\nb"


@pytest.mark.parametrize("answer, reference, value", [
    ('{"answer": "hello"}', "'hello'", 1.0),
    ('{"answer": "[1, 2]"}', "[1, 2]", 1.0),
    ('{"answer": "[1,2]"}', "[1, 2]", 0.0),
    ('{"answer": "        "}', "'        '", 1.0),  # a JSON string's spaces are its value
    ('{"answer": ""}', "''", 1.0),
    ("The answer is Paris.", "Paris", 1.0),
    ('{"answer": "Hello"}', "'hello'", 0.0),
    ('{"answer": "\\"Vipra\\""}', "'Vipra'", 1.0),  # quotes escaped inside the JSON string
    ('{"answer": "5"}', "'5'", 1.0),  # a normalised string: the quotes around an answer do not count
    ('{"answer": "two\\nlines"}', "'two\\nlines'", 1.0),  # a line break and its escape are one answer
    ('{"answer": {"a": 1}}', "{'a': 1}", 1.0),  # a JSON value in Python notation
])
def test_exact_scorer(answer, reference, value):
    assert score("exact", answer, reference=reference).value == value


# --- choice -------------------------------------------------------------------------------------------

PROMPT = "Which is the capital of France?\nA) Berlin\nB) Paris\nC) Rome\nD) Madrid\nAnswer with a letter."


def test_prompt_options():
    assert prompt_options(PROMPT) == {"A": "Berlin", "B": "Paris", "C": "Rome", "D": "Madrid"}
    assert prompt_options("no options here") == {}


@pytest.mark.parametrize("answer, value", [
    ("B", 1.0), ("(B)", 1.0), ("B) Paris", 1.0), ("The answer is B.", 1.0), ('{"answer": "B"}', 1.0),
    ("The answer is Paris.", 1.0), ("Paris", 1.0), ("I think it is (B), the city of light.", 1.0),
    ("C", 0.0), ("The answer is Rome", 0.0),
])
def test_choice_scorer(answer, value):
    assert score("choice", answer, reference="B", prompt=PROMPT).value == value


def test_choice_scorer_takes_a_reference_given_as_option_text():
    assert score("choice", "B", reference="Paris", prompt=PROMPT).value == 1.0
    assert score("choice", "A", reference="Paris", prompt=PROMPT).value == 0.0


def test_choice_letter_ignores_words_that_start_with_a_capital():
    assert choice_letter("I think so", {}) is None
    assert choice_letter("E", {"A": "x", "B": "y"}) is None


# --- math ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("answer, reference, value", [
    ("The answer is $\\frac{1}{2}$.", "0.5", 1.0),
    ("so $\\boxed{\\frac{1}{2}}$", "\\frac12", 1.0),
    ('{"answer": "1/2"}', "\\frac{1}{2}", 1.0),
    ("The set is $\\{1,2\\}$", "\\{2, 1\\}", 1.0),
    ("The answer is $[1,2)$.", "[1, 2)", 1.0),
    ("The answer is $[1,2]$.", "[1, 2)", 0.0),
    ("#### 72", "72", 1.0),
    ("x = 3", "4", 0.0),
])
def test_math_scorer_decides_equivalence_with_math_verify(answer, reference, value):
    assert score("math", answer, reference=reference).value == value


def test_math_scorer_gives_0_to_an_answer_without_mathematics_and_leaves_an_unreadable_reference_unscored():
    assert score("math", "I do not know.", reference="3").value == 0.0
    assert score("math", "3", reference="?").value is None


# --- judge --------------------------------------------------------------------------------------------

from carrot_hub.collect.contracts import Completion  # noqa: E402
from carrot_hub.collect.judge import judge_request, parse_grade, rubric  # noqa: E402
from carrot_hub.serving.upstreams import UpstreamFailure  # noqa: E402


def judge_with(reply=None, failure=None, cost=0.002):
    asked = []

    async def ask(candidate, messages, sampling):
        asked.append((candidate, messages, sampling))
        if failure:
            raise UpstreamFailure(candidate, failure, status=503)
        return Completion(model=candidate, text=reply, cost=cost)

    scorer = build_scorer("judge:grader", ask=ask, candidates=["grader", "small"], allow_code_execution=False)
    return scorer, asked


def test_rubrics_ship_as_package_data_with_and_without_a_reference():
    assert "{reference}" in rubric(True) and "{reference}" not in rubric(False)
    assert all("{prompt}" in rubric(r) and "{answer}" in rubric(r) and "Score: N" in rubric(r) for r in (True, False))


@pytest.mark.parametrize("reply, grade", [
    ("Correct and complete.\nScore: 10", 1.0), ("Partly right.\nScore: 7/10", 0.7), ("**Score:** 3", 0.3),
    ("score: 4\n...on reflection\nScore: 6", 0.6), ("Score: 11", None), ("I think it is fine.", None), ("", None),
])
def test_parse_grade(reply, grade):
    assert parse_grade(reply) == grade


def test_judge_scores_in_0_1_and_keeps_its_cost_apart():
    scorer, asked = judge_with("The result matches the reference.\nScore: 8")
    result = asyncio.run(scorer.score(ScoringInput("What is 9*2?", "18", reference="18")))
    assert (result.value, result.judge_model, result.judge_cost, result.scorer) == (0.8, "grader", 0.002, "judge:grader")
    candidate, messages, sampling = asked[0]
    assert candidate == "grader" and sampling["temperature"] == 0
    assert "[Reference answer]\n18" in messages[0]["content"] and "What is 9*2?" in messages[0]["content"]


def test_judge_without_reference_uses_the_other_rubric():
    scorer, asked = judge_with("Score: 5")
    asyncio.run(scorer.score(ScoringInput("Write a haiku.", "Autumn moon...")))
    assert "No reference answer" in asked[0][1][0]["content"]


def test_judge_leaves_unparseable_replies_failures_and_refusals_unscored():
    scorer, _ = judge_with("Looks good to me!")
    result = asyncio.run(scorer.score(ScoringInput("q", "an answer")))
    assert result.value is None and "no 'Score: N'" in result.reason and result.judge_cost == 0.002
    scorer, _ = judge_with(failure="HTTP 503")
    result = asyncio.run(scorer.score(ScoringInput("q", "an answer")))
    assert result.value is None and "failed" in result.reason
    scorer, asked = judge_with("Score: 0")
    assert asyncio.run(scorer.score(ScoringInput("q", "I can't help with that."))).value is None
    assert asked == []  # a refusal is not worth paying a judge for


def test_judge_sees_the_whole_conversation():
    messages = ({"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
                {"role": "user", "content": "And 2+2?"})
    content = judge_request(ScoringInput("And 2+2?", "4", messages=messages))[0]["content"]
    assert "assistant: Hello!" in content and "user: And 2+2?" in content
