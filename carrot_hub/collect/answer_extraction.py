"""Finding the final answer inside a model's free-text reply, and recognising replies that are not answers.

Benchmarks ask for the final answer in some marked place, and models put it there in their own way:
a JSON object with an `answer` field (ZeroEval's templates), GSM8K's `#### 42`, LaTeX's `\\boxed{42}`,
or a closing "The answer is 42." `final_answer_span` looks for these marks, most explicit first, and
says which one it found; the scorers (`scorers.py`) then read a number, a letter or a string out of
that span. A reply without any mark is left whole, for the scorer to decide what to take from it.

Nothing here is specific to one data set: the marks are the ones prompts in the wild ask for.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

# How the final answer was found, most explicit first (recorded in a Score's reason on failure).
JSON_FIELD = "json answer field"
HASH_MARK = "#### mark"
BOXED = "\\boxed{}"
ANSWER_PHRASE = "'answer is' phrase"
WHOLE_REPLY = "whole reply"

_ANSWER_KEY = re.compile(r'"answer"\s*:\s*', re.IGNORECASE)
_INVALID_ESCAPE = re.compile(r"\\([^\"\\/bfnrtu])")  # `\'` and friends: not JSON, common in model output
_HASH_MARK = re.compile(r"####\s*(.+)")
_ANSWER_PHRASE = re.compile(
    r"(?:final answer|the answer|answer)\s*(?:is|:|=)\s*[:\-]?\s*(.+)", re.IGNORECASE
)
_REFUSAL = re.compile(
    r"^\W*(?:i'?m sorry|i am sorry|sorry|i apologi[sz]e|unfortunately)?[^.]{0,40}?"
    r"\b(?:i|we)\s+(?:can(?:no|')t|cannot|am unable to|'m unable to|won'?t|will not|must decline to)\s+"
    r"(?:help|assist|answer|provide|comply|do that|complete|fulfil|fulfill)",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class AnswerSpan:
    """The part of a reply that holds its final answer, and the mark it was found by (`JSON_FIELD`, ...)."""

    text: str
    found_by: str
    literal: bool = False  # True when `text` is a JSON string's exact value (spaces and quotes are its own)

    @property
    def marked(self) -> bool:
        """True when the reply marked its answer; False when `text` is the whole reply."""
        return self.found_by != WHOLE_REPLY


def is_empty(answer: str | None) -> bool:
    """An answer with no visible characters."""
    return answer is None or not answer.strip()


def is_refusal(answer: str) -> bool:
    """
    A reply that declines to answer ("I'm sorry, but I can't help with that."): checked on its opening
    only, so a worked answer that says "I cannot simplify this further" halfway through is not one.
    """
    return bool(_REFUSAL.match(answer.strip()[:200]))


def final_answer_span(reply: str) -> AnswerSpan:
    """The reply's final answer, by the most explicit mark it carries (see the module docstring)."""
    for find in (_json_answer, _hash_mark, _boxed, _answer_phrase):
        span = find(reply)
        if span is not None and (span.literal or span.text.strip()):  # `"answer": ""` is an answer too
            return span
    return AnswerSpan(reply.strip(), WHOLE_REPLY)


def _json_answer(reply: str) -> AnswerSpan | None:
    """The `answer` field of the first JSON object that has one; a half-valid object is read leniently."""
    for obj_text in _json_objects(reply):
        value = _loads(obj_text)
        if isinstance(value, dict):
            for key, field in value.items():
                if key.strip().lower() == "answer" and field is not None:
                    if isinstance(field, str):
                        return AnswerSpan(field, JSON_FIELD, literal=True)
                    return AnswerSpan(repr(field), JSON_FIELD)  # Python notation: [1, 'a'], True, None
    match = _ANSWER_KEY.search(reply)  # e.g. an unescaped quote broke the object: read the field alone
    if match is None:
        return None
    rest = reply[match.end():]
    if rest.startswith('"'):
        end = _closing_quote(rest)
        text = rest[1:end] if end > 0 else rest[1:].split("\n")[0]
        return AnswerSpan(_unescape(text), JSON_FIELD, literal=end > 0)
    return AnswerSpan(re.split(r"[,}\n]", rest, maxsplit=1)[0].strip(), JSON_FIELD)


def _loads(text: str):
    """`json.loads`, lenient the way models write JSON: raw newlines in strings, `\\'` escapes; None if still invalid."""
    for attempt in (text, _INVALID_ESCAPE.sub(r"\1", text)):
        try:
            return json.loads(attempt, strict=False)  # strict=False: raw control characters inside strings
        except json.JSONDecodeError:
            continue
    return None


def _unescape(text: str) -> str:
    """A JSON string's body read by hand: its escapes decoded where they are valid JSON."""
    value = _loads('"' + text + '"')
    return value if isinstance(value, str) else text


def _closing_quote(text: str) -> int:
    """Index of the quote closing the string that opens `text`: the first one followed by `,`, `}` or the line's end."""
    line = text.split("\n", 1)[0]
    match = re.compile(r'(?<!\\)"\s*(?:[,}]|$)').search(line, 1)
    return match.start() if match else -1


def _json_objects(text: str):
    """Each balanced `{...}` in `text` (outermost only), in order; braces inside strings are skipped."""
    depth, start, in_string, escaped = 0, None, False, False
    for i, ch in enumerate(text):
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
            continue
        if ch == '"' and depth > 0:
            in_string = True
        elif ch == "{":
            if depth == 0:
                start = i
            depth += 1
        elif ch == "}" and depth > 0:
            depth -= 1
            if depth == 0:
                yield text[start:i + 1]


def _hash_mark(reply: str) -> AnswerSpan | None:
    matches = _HASH_MARK.findall(reply)
    return AnswerSpan(matches[-1].strip(), HASH_MARK) if matches else None


def _boxed(reply: str) -> AnswerSpan | None:
    """The content of the last `\\boxed{...}` (nested braces kept)."""
    start = reply.rfind("\\boxed{")
    if start < 0:
        return None
    depth, i = 0, start + len("\\boxed")
    for j in range(i, len(reply)):
        if reply[j] == "{":
            depth += 1
        elif reply[j] == "}":
            depth -= 1
            if depth == 0:
                return AnswerSpan(reply[i + 1:j], BOXED)
    return None


def _answer_phrase(reply: str) -> AnswerSpan | None:
    """What follows the last "answer is"/"Answer:" on its line."""
    matches = _ANSWER_PHRASE.findall(reply)
    return AnswerSpan(matches[-1].strip(), ANSWER_PHRASE) if matches else None
