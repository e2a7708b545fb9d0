"""The prompts `carrot collect` asks: one list of `PromptItem`s, whatever the prompt set was.

A prompt set is one of:
- a packaged routing table by name (`zeroeval-2024`): its prompts, `golden_answer` as the reference;
- a SPROUT-layout folder, or a JSONL / JSON / CSV / Parquet file, read with `datasets` like the
  routing tables are (`carrot_hub.data.sources.open_dataset`);
- a Hub data set id, read with `datasets` (streamed when asked);
- the outcome log of `carrot serve` (`from_log=True`), optionally only the prompts the router
  flagged as out of distribution.

Columns: `prompt` (text) or `messages` (an OpenAI chat request's messages); optional `key` (or `id`),
`reference` (or `golden_answer`), `task` (or `dataset`), `tests`. A row without a key is keyed by
its text's SHA-256 (as the outcome log keys served prompts), so a rerun finds the same cells.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import BadInputError

PROMPT_COLUMNS = ("prompt", "messages")
KEY_COLUMNS = ("key", "id")
REFERENCE_COLUMNS = ("reference", "golden_answer")
TASK_COLUMNS = ("task", "dataset")
DEFAULT_TASK = "default"


class PromptSetError(BadInputError):
    """The prompt set cannot be read as one (no prompt column, a bad row, an unreadable file)."""


@dataclass(frozen=True)
class PromptItem:
    """
    One prompt to ask every candidate.

    `prompt` is the text a router embeds (the table's `prompt` column): the prompt itself, or the
    last user message's text when the row gave `messages`. `messages` is the chat request sent.
    """

    key: str
    prompt: str
    messages: tuple = field(default=())
    task: str = DEFAULT_TASK
    reference: str | None = None
    tests: str | None = None

    @property
    def prompt_sha256(self) -> str:
        """SHA-256 of the request sent (messages as JSON): a rerun checks a stored cell asked the same thing."""
        text = json.dumps(list(self.messages), ensure_ascii=False, sort_keys=True)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    def chat_messages(self) -> list[dict]:
        return [dict(message) for message in self.messages]


@dataclass
class PromptSet:
    """The prompts of one prompt set, in its order; `prices` from its `prices.json` when it has one."""

    items: list[PromptItem]
    name: str
    description: str
    prices: dict | None = None
    duplicates_dropped: int = 0

    def __len__(self) -> int:
        return len(self.items)


def text_key(prompt: str) -> str:
    """The key of a row that gave none: its text's SHA-256 (the outcome log keys served prompts alike)."""
    from ..data.outcome_log_reader import prompt_key

    return prompt_key(prompt)


def _message_text(message: Mapping) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, (list, tuple)):
        return "\n".join(p["text"] for p in content
                         if isinstance(p, Mapping) and p.get("type") == "text" and isinstance(p.get("text"), str))
    return ""


def _checked_messages(value, where: str) -> tuple[tuple, str]:
    """`(messages, routed text)` of a `messages` cell, or `PromptSetError` naming the row."""
    if isinstance(value, str):  # JSON text, e.g. from a CSV file
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise PromptSetError(f"{where}: messages is text that is not a JSON list of chat messages.") from None
    if not isinstance(value, (list, tuple)) or not value:
        raise PromptSetError(f"{where}: messages must be a non-empty list of {{role, content}} objects.")
    messages = []
    for message in value:
        if not isinstance(message, Mapping) or not isinstance(message.get("role"), str) or "content" not in message:
            raise PromptSetError(f"{where}: each message needs a role and a content, got {message!r:.80}.")
        messages.append({"role": message["role"], "content": message["content"]})
    users = [_message_text(m) for m in messages if m["role"] == "user"]
    text = next((t for t in reversed(users) if t.strip()), "")
    if not text.strip():
        raise PromptSetError(f"{where}: no user message has text to route on.")
    return tuple(messages), text


def _optional_text(row: Mapping, names: tuple[str, ...]) -> str | None:
    for name in names:
        value = row.get(name)
        if value is None:
            continue
        if isinstance(value, (list, dict)):
            return json.dumps(value, ensure_ascii=False)
        return str(value)
    return None


def items_from_rows(rows: Iterable[Mapping], name: str, limit: int | None = None, default_task: str = DEFAULT_TASK
                    ) -> tuple[list[PromptItem], int]:
    """
    `(items, duplicates dropped)` from mapping rows. The first row decides the prompt column
    (`prompt`, else `messages`); a row repeating an earlier key is refused unless it is the same
    prompt (then dropped and counted).
    """
    items: list[PromptItem] = []
    seen: dict[str, str] = {}
    duplicates = 0
    column = None
    for number, row in enumerate(rows, start=1):
        if limit is not None and len(items) >= limit:
            break
        where = f"{name} row {number}"
        if not isinstance(row, Mapping):
            raise PromptSetError(f"{where} is a {type(row).__name__}, not a record with a prompt column.")
        if column is None:
            column = next((c for c in PROMPT_COLUMNS if c in row), None)
            if column is None:
                raise PromptSetError(
                    f"{name} has no prompt column: give each row a 'prompt' (text) or 'messages' (chat messages); "
                    f"its columns are {', '.join(map(str, row)) or 'none'}."
                )
        value = row.get(column)
        if column == "prompt":
            if not isinstance(value, str) or not value.strip():
                raise PromptSetError(f"{where}: the prompt is {'empty' if isinstance(value, str) else repr(value)[:40]}; "
                                     "give it text or remove the row.")
            messages, text = ({"role": "user", "content": value},), value
        else:
            messages, text = _checked_messages(value, where)
        key = _optional_text(row, KEY_COLUMNS) or text_key(json.dumps(list(messages), ensure_ascii=False, sort_keys=True)
                                                           if column == "messages" else text)
        item = PromptItem(
            key=key, prompt=text, messages=messages,
            task=_optional_text(row, TASK_COLUMNS) or default_task,
            reference=_optional_text(row, REFERENCE_COLUMNS),
            tests=_optional_text(row, ("tests",)),
        )
        if key in seen:
            if seen[key] != item.prompt_sha256:
                raise PromptSetError(f"{where} repeats the key {key!r} with another prompt; keys must be unique.")
            duplicates += 1
            continue
        seen[key] = item.prompt_sha256
        items.append(item)
    return items, duplicates


def _dataset_rows(dataset) -> Iterator[dict]:
    yield from iter(dataset)


def read_prompt_set(
    source: str | os.PathLike,
    *,
    split: str = "train",
    streaming: bool = False,
    limit: int | None = None,
) -> PromptSet:
    """
    Read a prompt set (see the module docstring). `split` picks the split of a table or Hub data set;
    `streaming` reads a Hub data set without downloading it whole; `limit` keeps the first N prompts.
    """
    from ..data.outcome_log_reader import is_outcome_log
    from ..data.packaged import packaged_tables, PACKAGED_DATA_DIR
    from ..data.sources import RoutingSourceError, open_dataset

    text = os.fspath(source)
    if text in packaged_tables():
        text = str(PACKAGED_DATA_DIR / text)
    path = Path(text).expanduser()
    if path.is_dir() and is_outcome_log(path):
        raise PromptSetError(f"{text} is the outcome log of carrot serve: pass it as --from-log {text}.")
    name = path.name if path.exists() else text
    default_task = path.stem if path.is_file() else DEFAULT_TASK
    with tempfile.TemporaryDirectory(prefix="carrot-collect-") as cache_dir:
        try:
            dataset, prices_document, description = open_dataset(
                str(path) if path.exists() else text, split=split, streaming=streaming or path.exists(),
                cache_dir=cache_dir)
            items, duplicates = items_from_rows(_dataset_rows(dataset), name, limit, default_task)
        except PromptSetError:
            raise
        except RoutingSourceError as error:
            raise PromptSetError(f"Cannot read the prompt set {text}: {error}") from None
        except Exception as error:  # noqa: BLE001  (datasets' own errors, in one line)
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise PromptSetError(f"Cannot read the prompt set {text}: {type(error).__name__}: {first}") from None
    if not items:
        raise PromptSetError(f"The prompt set {text} has no prompts.")
    prices = prices_document["prices"] if prices_document else None
    return PromptSet(items, name, description, prices, duplicates)


def read_log_prompt_set(log_dir: str | os.PathLike, *, only_out_of_distribution: bool = False,
                        limit: int | None = None) -> PromptSet:
    """
    The distinct prompts a `carrot serve` gateway served (its outcome log, with prompts logged), in
    the order first served; with `only_out_of_distribution` just those the router flagged as out of
    distribution (the served record's `in_distribution` is false). Task: `served`.
    """
    from ..data.outcome_log_reader import SERVED_TASK, is_outcome_log, read_outcome_log

    folder = Path(log_dir).expanduser()
    if not is_outcome_log(folder):
        raise PromptSetError(f"--from-log {log_dir} is not an outcome log of carrot serve (no outcomes-*.jsonl shards).")
    served = list(read_outcome_log(folder).served.values())
    with_prompt = [r for r in served if isinstance(r.get("prompt"), str) and r["prompt"].strip()]
    if not with_prompt:
        raise PromptSetError(f"The outcome log {log_dir} holds no prompt text (served with --no-prompt-log?): "
                             "there is nothing to ask.")
    if only_out_of_distribution:
        flagged = [r for r in with_prompt if "in_distribution" in r]
        if not flagged:
            raise PromptSetError(
                f"The outcome log {log_dir} does not record the router's out-of-distribution flag "
                "(`in_distribution`); it was written by an older carrot serve. Leave out --only-out-of-distribution."
            )
        with_prompt = [r for r in with_prompt if r.get("in_distribution") is False]
        if not with_prompt:
            raise PromptSetError(f"No prompt of the outcome log {log_dir} was flagged out of distribution.")
    rows = ({"prompt": r["prompt"], "task": SERVED_TASK} for r in with_prompt)
    items, duplicates = items_from_rows(rows, str(folder), limit)
    return PromptSet(items, folder.name, str(folder), None, duplicates)
