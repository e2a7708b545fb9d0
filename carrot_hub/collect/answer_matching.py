"""Reading a number, a string or a multiple-choice letter out of an answer span, and comparing it with a reference.

The rules are the ones graders of GSM8K-style, exact-match and multiple-choice benchmarks share:
- numbers: thousands commas, `$`, units and a trailing period are ignored ("$1,234.50 per day." is
  1234.5); a fraction `3/4` or `\\frac{3}{4}` is its value; the first number of a marked answer counts
  ("18 dollars (9 × 2)" is 18), the last number of an unmarked reply ("... so she makes 18.");
- exact answers: compared as strings, with outer whitespace and the quotes or backticks around the
  answer dropped and a line break read as its escape `\\n` (`'abc'`, `"abc"` and `abc` are one
  answer, so are `'5'` and `5`, or a two-line string and its Python repr); case and inner spacing are
  kept (`'ABC'` is another answer than `'abc'`, `[1,2]` another than `[1, 2]`);
- choices: a letter ("B", "(B)", "B) Paris", "B. Paris") or an option's text, mapped to the option's
  letter through the options listed in the prompt ("A) ...", "(B) ...", "C. ...").
"""

from __future__ import annotations

import math
import re
from fractions import Fraction

from .answer_extraction import ANSWER_PHRASE, WHOLE_REPLY, AnswerSpan, final_answer_span

_NUMBER = re.compile(
    r"(?<![\w.])(?P<sign>[-−]\s?)?\$?\s?"
    r"(?P<int>(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+)"
    r"(?:\s*/\s*(?P<den>\d+)(?![\d.,]\d))?"
)
_LATEX_FRACTION = re.compile(r"\\[dt]?frac\s*\{\s*([^{}]+?)\s*\}\s*\{\s*([^{}]+?)\s*\}")
_LATEX_NOISE = re.compile(r"\\[,!;: ]|\{,\}|\\text\{[^{}]*\}|\\(?:left|right)|\\\$")
_QUOTES = "'\"`"
_OPTION_LINE = re.compile(r"^[ \t]*\(?([A-Z])[).:][ \t]+(\S.*?)\s*$", re.MULTILINE)
_LETTER_FIRST = re.compile(r"^\(?([A-Z])(?:\)|\.|:|$)(?:\s|$)")
_LETTER_IN_PARENS = re.compile(r"\(([A-Z])\)")


def parse_number(text: str, last: bool = False) -> float | None:
    """The first (or `last`) number written in `text` as a float, None when there is none."""
    text = _LATEX_NOISE.sub(lambda m: "," if m.group(0) == "{,}" else "", text)
    text = _LATEX_FRACTION.sub(r"\1/\2", text)
    matches = list(_NUMBER.finditer(text))
    if not matches:
        return None
    match = matches[-1] if last else matches[0]
    value = Fraction(match.group("int").replace(",", ""))
    if match.group("den") is not None and int(match.group("den")) != 0:
        value /= int(match.group("den"))
    return float(-value if match.group("sign") else value)


def answer_number(reply: str) -> tuple[float | None, AnswerSpan]:
    """The reply's final numeric answer: the first number of its marked answer, else its last number."""
    span = final_answer_span(reply)
    return parse_number(span.text, last=not span.marked), span


def same_number(a: float, b: float) -> bool:
    """Equal up to float noise (1e-6 relative): 0.1 + 0.2 answers 0.3."""
    return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9)


def normalise_exact(text: str, literal: bool = False, prose: bool = False) -> str:
    """
    `text` as exact match compares it: outer whitespace (unless `literal`: a JSON string's exact value,
    whose spaces are its own) and the quotes or backticks around it dropped, line breaks written as
    `\\n`; with `prose` (an answer read from a sentence) a final period dropped too.
    """
    if not literal:
        text = text.strip()
        if prose and text.endswith(".") and not text.endswith(".."):
            text = text[:-1].rstrip()
    return text.strip(_QUOTES).replace("\r\n", "\n").replace("\n", "\\n")


def answer_exact(reply: str) -> tuple[str, AnswerSpan]:
    """The reply's final answer, normalised for exact match."""
    span = final_answer_span(reply)
    prose = span.found_by in (ANSWER_PHRASE, WHOLE_REPLY)
    return normalise_exact(span.text, literal=span.literal, prose=prose), span


def prompt_options(prompt: str) -> dict[str, str]:
    """The options a multiple-choice prompt lists (`{"A": "Paris", ...}`): lettered lines from A on, two at least."""
    options: dict[str, str] = {}
    for letter, text in _OPTION_LINE.findall(prompt):
        expected = chr(ord("A") + len(options))
        if letter == "A" and options:  # a second list starts: keep the last one (the question's own)
            options = {}
            expected = "A"
        if letter == expected:
            options[letter] = text
    return options if len(options) >= 2 else {}


def _plain(text: str) -> str:
    """Text for comparing option wording: case-folded, punctuation and spacing dropped."""
    return re.sub(r"[\W_]+", " ", text.casefold()).strip()


def choice_letter(text: str, options: dict[str, str], whole_reply: bool = False) -> str | None:
    """
    The option letter `text` names: a leading letter ("B", "(B)", "B) Paris"), or an option's exact
    wording; in a `whole_reply` (no marked answer) the last "(B)" it writes. None when it names none.
    """
    text = normalise_exact(text, prose=True)
    letter = _LETTER_FIRST.match(text)
    if letter and (not options or letter.group(1) in options):
        return letter.group(1)
    wording = _plain(text)
    for key, option in options.items():
        if wording and wording == _plain(option):
            return key
    if whole_reply:
        found = [m for m in _LETTER_IN_PARENS.findall(text) if not options or m in options]
        if found:
            return found[-1]
    return None


def reference_choice(reference: str, options: dict[str, str]) -> str | None:
    """The reference's letter: itself when it is one, else the option whose wording it is."""
    return choice_letter(reference, options)
