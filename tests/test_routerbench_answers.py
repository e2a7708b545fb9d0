"""RouterBench's recorded answers for replay: written in long form from a slice of the real CSVs, keyed as
the converted table is, replayed by the fake upstream and graded by the replay judge with RouterBench's own
correctness (also for a prompt the table holds under two keys, each row with some models' answers)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from carrot_hub.data import load_routing_table
from carrot_hub.data.routerbench import convert_routerbench, write_routerbench_responses
from carrot_hub.serving.replay_record import ReplayRecord

from .shared_data import routerbench_csv_slice

ROUTERBENCH_PRICES = Path(__file__).resolve().parent.parent / "scripts" / "routerbench_prices.json"


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """A slice of the real CSVs (the first rows of each file, and both rows of a duplicated ARC sample), converted."""
    folder = tmp_path_factory.mktemp("routerbench")
    source = routerbench_csv_slice(folder / "csv", first_rows=4)
    convert_routerbench(source, folder / "table", ROUTERBENCH_PRICES, progress=False)
    written = write_routerbench_responses(source, folder / "answers" / "responses.parquet")
    return folder, written


def test_answers_are_written_keyed_as_the_table_with_its_scores(converted):
    folder, written = converted
    answers = pq.read_table(folder / "answers" / "responses.parquet").to_pandas()
    assert list(answers.columns) == ["key", "model", "response", "score"] and len(answers) == written
    tables = [load_routing_table(folder / "table", split=split) for split in ("train", "test")]
    cells = {}
    for table in tables:
        for row, key in enumerate(table.prompt_ids):
            for column, model in enumerate(table.models):
                if not np.isnan(table.scores[row, column]):
                    cells[(key, model)] = table.scores[row, column]
    # every scored cell has its answer, with the table's score; nothing else is written
    assert {(k, m): s for k, m, s in zip(answers["key"], answers["model"], answers["score"])} == cells
    assert not answers["response"].str.startswith("[").any()  # list-like strings parsed, as tokens were counted


def test_the_replay_judge_grades_routerbench_answers_with_routerbenchs_correctness(converted):
    folder, _ = converted
    record = ReplayRecord.from_files(folder / "table", folder / "answers" / "responses.parquet")
    train = load_routing_table(folder / "table", split="train")
    twins = [p for p in set(train.prompts) if len(record.keys_of_prompt[p]) == 2]
    assert twins, "the slice keeps a prompt held under two keys"
    checked = 0
    for row, (prompt, key) in enumerate(zip(train.prompts, train.prompt_ids)):
        for column, model in enumerate(train.models):
            if np.isnan(train.scores[row, column]):
                continue
            answer = record.lookup(prompt, model)  # found under whichever key holds this model's answer
            assert answer is not None and answer.output_tokens == train.output_tokens[row, column]
            graded = record.grade(prompt, answer.text)
            if isinstance(graded, str):  # two models wrote this text and were scored differently
                assert "different scores" in graded
                continue
            assert graded[0] == train.scores[row, column]
            checked += 1
    assert checked > 0.9 * int((~np.isnan(train.scores)).sum())
    assert record.lookup("a prompt RouterBench never had", train.models[0]) is None
