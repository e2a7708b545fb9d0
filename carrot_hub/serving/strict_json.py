"""JSON from outside the gateway (client bodies, upstream answers), read so that it can be relayed.

Python's `json` accepts what cannot be sent on: `NaN`, `Infinity` and numbers that overflow to
infinity (`1e400`), which `json.dumps(allow_nan=False)` then refuses; `\\ud800` escapes, which give
strings that cannot be encoded as UTF-8; and nesting deep enough to hit the recursion limit. Each of
those became a plain-text 500 somewhere after parsing. `loads_strict` refuses them up front with
`JSONRejected`, whose message says what is wrong, so the caller can answer a 4xx (a client's body)
or fall back (an upstream's answer).
"""

from __future__ import annotations

import json
import math
import re

# Containers inside containers. OpenAI bodies nest a handful of levels; tool schemas a few dozen.
MAX_JSON_DEPTH = 100
_SURROGATE = re.compile("[\ud800-\udfff]")
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")  # raw UTF-8 cannot hold a surrogate: only an escape can


class JSONRejected(ValueError):
    """JSON that is invalid or cannot be relayed (non-finite number, lone surrogate, too deep)."""


def _refuse_constant(name: str):
    raise JSONRejected(f"{name} is not a JSON number (NaN and Infinity cannot be sent on)")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise JSONRejected(f"the number {text[:40]} is out of range for a 64-bit float")
    return value


def loads_strict(raw: bytes | str, max_depth: int = MAX_JSON_DEPTH):
    """Parse JSON; `JSONRejected` if it is invalid, holds a non-finite number or a lone surrogate, or nests deeper than `max_depth`."""
    try:
        value = json.loads(raw, parse_constant=_refuse_constant, parse_float=_finite_float)
    except JSONRejected:
        raise
    except json.JSONDecodeError as error:
        raise JSONRejected(f"not valid JSON ({error.msg} at character {error.pos})") from None
    except RecursionError:
        raise JSONRejected(f"nested more than {max_depth} levels deep") from None
    except (ValueError, UnicodeDecodeError) as error:  # e.g. invalid UTF-8, an integer of 5,000 digits
        raise JSONRejected(f"not valid JSON ({str(error).splitlines()[0][:120]})") from None
    if isinstance(raw, str):  # an SSE event's data
        surrogates_possible = "\\u" in raw or (not raw.isascii() and _SURROGATE.search(raw) is not None)
    else:
        surrogates_possible = _SURROGATE_ESCAPE.search(raw) is not None
    _check_tree(value, max_depth, surrogates_possible)
    return value


def _check_tree(value, max_depth: int, surrogates_possible: bool) -> None:
    """Walk the containers without recursion: depth, and lone surrogates in keys and strings."""
    stack = [(value, 0)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            items = node.values()
            if surrogates_possible:
                for key in node:
                    _check_string(key)
        elif isinstance(node, list):
            items = node
        else:
            if surrogates_possible and isinstance(node, str):
                _check_string(node)
            continue
        if depth >= max_depth:
            raise JSONRejected(f"nested more than {max_depth} levels deep")
        for item in items:
            if isinstance(item, (dict, list)) or (surrogates_possible and isinstance(item, str)):
                stack.append((item, depth + 1))


def _check_string(text: str) -> None:
    found = _SURROGATE.search(text)
    if found is not None:
        raise JSONRejected(f"a string holds a lone surrogate (U+{ord(found.group()):04X}), which is not valid Unicode text")
