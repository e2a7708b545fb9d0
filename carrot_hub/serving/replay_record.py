"""Recorded answers for the fake upstream's replay mode: each (prompt, model) answered from a record.

A record is a SPROUT-layout table (its prompts, and per model the token counts of each answer) plus
the raw answers in long format (`key`, `model`, `response`; e.g. ZeroEval's 44,499 answers in
`zeroeval-2024/responses/`). A request is matched by its last user message's text (the table's
`prompt`) and its `model` (the table's column); the reply carries the recorded answer and, as
`usage`, the table's token counts, so a collection's realised cost can be checked against the
table's own cost to the cent. Requests are counted per cell (`counts`), which is how a test sees
that no cell was asked twice.

Where the answers carry their recorded `score` (ZeroEval's 0/1), `grade` finds an answer by its
text among a prompt's recorded answers and returns that score: the replay judge
(`carrot_hub.serving.replay_judge`) grades with it.
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
    score: float | None = None  # the recorded grade of this answer, when the record has one


@dataclass
class ReplayRecord:
    """
    `(prompt text, model) -> RecordedAnswer`, and how many times each (key, model) cell was asked.
    `keys_of_prompt` lists every key of a prompt text: a table may hold one text under two keys, each
    row with some models' answers (RouterBench's duplicated ARC samples).
    """

    keys_of_prompt: dict[str, list[str]]
    answers: dict[tuple[str, str], RecordedAnswer]
    models: list[str]
    counts: Counter = field(default_factory=Counter)
    graded: Counter = field(default_factory=Counter)  # (key, model) cells whose answer was graded, and how often

    def __post_init__(self):
        self._lock = threading.Lock()
        self._by_key: dict[str, list[tuple[str, RecordedAnswer]]] | None = None

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
        texts, scores = {}, {}
        for file in files:
            names = pq.read_schema(file).names
            columns = pq.read_table(file, columns=["key", "model", "response", *(["score"] if "score" in names else [])])
            columns = columns.to_pydict()
            recorded = columns.get("score", [None] * len(columns["key"]))
            for key, model, text, score in zip(columns["key"], columns["model"], columns["response"], recorded):
                texts[(key, model)] = text or ""
                scores[(key, model)] = None if score is None else float(score)
        keys_of_prompt, answers, models = {}, {}, []
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
                                                               cell.get("num_output_tokens"), scores[(key, model)])
            for prompt, key in zip(prompts, keys):
                known = keys_of_prompt.setdefault(prompt, [])
                if key not in known:
                    known.append(key)
        return cls(keys_of_prompt, answers, models)

    def lookup(self, prompt: str, model: str) -> RecordedAnswer | None:
        """The recorded answer of `model` to `prompt` (counted as one request of that cell), or None."""
        key = next((k for k in self.keys_of_prompt.get(prompt, ()) if (k, model) in self.answers), None)
        answer = self.answers.get((key, model)) if key is not None else None
        if answer is not None:
            with self._lock:
                self.counts[(key, model)] += 1
        return answer

    def grade(self, prompt: str, answer: str) -> tuple[float, RecordedAnswer] | str:
        """
        The recorded score of `answer` to `prompt` and the recorded answer it matched: the answer's
        text equal to a recorded answer's, else equal once runs of whitespace are made one space (a
        streamed answer's chunks are joined with spaces). A string saying why when there is none: the
        prompt is not recorded, no recorded answer matches, the matches have no score or differ in it.
        """
        keys = self.keys_of_prompt.get(prompt)
        if not keys:
            return "the request is not a prompt of the record"
        if self._by_key is None:
            by_key: dict[str, list] = {}
            for (cell_key, model), recorded in self.answers.items():
                by_key.setdefault(cell_key, []).append((model, recorded))
            self._by_key = by_key
        candidates = [(key, model, recorded) for key in keys for model, recorded in self._by_key.get(key, [])]
        matches = [(k, m, a) for k, m, a in candidates if a.text == answer]
        if not matches:
            words = " ".join(answer.split())
            matches = [(k, m, a) for k, m, a in candidates if " ".join(a.text.split()) == words]
        if not matches:
            return "the answer is none of the recorded answers to this prompt"
        scores = {a.score for _, _, a in matches}
        if None in scores:
            return "the record has no score for this answer"
        if len(scores) > 1:
            return f"answers of this text were recorded with different scores ({sorted(scores)})"
        with self._lock:
            for key, model, _ in matches:
                self.graded[(key, model)] += 1
        return scores.pop(), matches[0][2]

    def count_summary(self) -> dict:
        """`{"requests", "cells", "max_per_cell", "repeated_cells"}` over the cells asked so far."""
        with self._lock:
            counts = dict(self.counts)
        return {
            "requests": sum(counts.values()), "cells": len(counts),
            "max_per_cell": max(counts.values(), default=0),
            "repeated_cells": sum(1 for n in counts.values() if n > 1),
        }
