"""Recorded answers for the fake upstream's replay mode: each (prompt, model) answered from a record.

A record is a SPROUT-layout table (its prompts, and per model the token counts of each answer) plus
the raw answers in long format (`key`, `model`, `response`; e.g. ZeroEval's 44,499 answers in
`zeroeval-2024/responses/`). A request is matched by its last user message's text (the table's
`prompt`) and its `model` (the table's column); the reply carries the recorded answer and, as
`usage`, the table's token counts, so a collection's realised cost can be checked against the
table's own cost to the cent. Requests are counted per cell (`counts`), which is how a test sees
that no cell was asked twice.
"""

from __future__ import annotations

import os
import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.parquet as pq


@dataclass(frozen=True)
class RecordedAnswer:
    key: str
    text: str
    input_tokens: int | None
    output_tokens: int | None


@dataclass
class ReplayRecord:
    """`(prompt text, model) -> RecordedAnswer`, and how many times each (key, model) cell was asked."""

    key_of_prompt: dict[str, str]
    answers: dict[tuple[str, str], RecordedAnswer]
    models: list[str]
    counts: Counter = field(default_factory=Counter)

    def __post_init__(self):
        self._lock = threading.Lock()

    @classmethod
    def from_files(cls, table: str | os.PathLike, responses: str | os.PathLike | list | None = None) -> ReplayRecord:
        """
        Read a record: `table` is a SPROUT-layout folder (every `data/*.parquet` split is read);
        `responses` the raw-answer parquet file(s) or a folder of them (default: `table/responses/`).
        Only cells with a recorded answer are replayed.
        """
        from ..data.validation import discover_model_columns

        table = Path(table).expanduser()
        if responses is None:
            responses = table / "responses"
        if isinstance(responses, (str, os.PathLike)):
            responses = Path(responses).expanduser()
            files = sorted(responses.glob("*.parquet")) if responses.is_dir() else [responses]
        else:
            files = [Path(p).expanduser() for p in responses]
        if not files or not all(f.is_file() for f in files):
            raise FileNotFoundError(f"No recorded answers (parquet files with key, model, response) at {responses}.")
        texts = {}
        for file in files:
            columns = pq.read_table(file, columns=["key", "model", "response"]).to_pydict()
            for key, model, text in zip(columns["key"], columns["model"], columns["response"]):
                texts[(key, model)] = text or ""
        key_of_prompt, answers, models = {}, {}, []
        for file in sorted((table / "data").glob("*.parquet")):
            data = pq.read_table(file)
            names = discover_model_columns(data.schema)
            models += [m for m in names if m not in models]
            keys, prompts = data.column("key").to_pylist(), data.column("prompt").to_pylist()
            for model in names:
                cells = data.column(model).to_pylist()
                for key, cell in zip(keys, cells):
                    if (key, model) in texts:
                        cell = cell or {}
                        answers[(key, model)] = RecordedAnswer(key, texts[(key, model)], cell.get("num_input_tokens"),
                                                               cell.get("num_output_tokens"))
            key_of_prompt.update(zip(prompts, keys))
        return cls(key_of_prompt, answers, models)

    def lookup(self, prompt: str, model: str) -> RecordedAnswer | None:
        """The recorded answer of `model` to `prompt` (counted as one request of that cell), or None."""
        key = self.key_of_prompt.get(prompt)
        answer = self.answers.get((key, model)) if key is not None else None
        if answer is not None:
            with self._lock:
                self.counts[(key, model)] += 1
        return answer

    def count_summary(self) -> dict:
        """`{"requests", "cells", "max_per_cell", "repeated_cells"}` over the cells asked so far."""
        with self._lock:
            counts = dict(self.counts)
        return {
            "requests": sum(counts.values()), "cells": len(counts),
            "max_per_cell": max(counts.values(), default=0),
            "repeated_cells": sum(1 for n in counts.values() if n > 1),
        }
