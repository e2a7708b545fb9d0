"""Writing SPROUT-layout folders, the RouterBench converter (on a slice of the real CSVs), user logs, splits."""

import json
from pathlib import Path

import numpy as np
import pytest

from carrot_hub.data import (
    RoutingDataError,
    load_routing_table,
    read_routing_logs,
    convert_routing_logs,
    split_indices,
    split_table,
    write_sprout_dataset,
)
from carrot_hub.data.routerbench import convert_routerbench, parse_list_text

from .data_files import MODELS, PRICES, sprout_rows, write_parquet
from .shared_data import routerbench_csv_slice

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA = ROOT / "carrot_hub" / "default_data" / "routerbench-0shot"
ROUTERBENCH_PRICES = ROOT / "scripts" / "routerbench_prices.json"


# --- the packaged, converted RouterBench data -------------------------------------------------


@pytest.mark.parametrize("split, rows, missing", [("train", 2225, 92), ("test", 953, 62)])
def test_packaged_routerbench_data(split, rows, missing):
    table = load_routing_table(DEFAULT_DATA, split=split)
    assert len(table) == rows and len(table.models) == 11
    assert len(set(table.prompt_ids)) == rows
    assert int((~table.observed).sum()) == missing
    assert set(np.unique(table.scores[table.observed])) == {0.0, 1.0}
    assert set(table.tasks) == {"arc-challenge", "mbpp", "winogrande"}
    assert (table.input_tokens > 0).all() and (table.output_tokens >= 0).all()
    assert set(table.prices) == set(table.models) and table.metadata["prices_recorded_on"] == "2024-03-01"
    if split == "test":  # the data README's orientation figure
        gpt4 = table.models.index("gpt-4-1106-preview")
        assert np.nanmean(table.scores[:, gpt4]) == pytest.approx(0.880, abs=1e-3)
    card = (DEFAULT_DATA / "README.md").read_text()
    assert "license: mit" in card and "RouterBench" in card and "all-MiniLM-L6-v2" in card


def test_routerbench_converter_on_a_real_slice(tmp_path):
    source = routerbench_csv_slice(tmp_path / "csv", first_rows=6)
    tables = convert_routerbench(source, tmp_path / "out", ROUTERBENCH_PRICES, progress=False)
    assert set(tables) == {"train", "test"}
    train = load_routing_table(tmp_path / "out", split="train")
    assert len(train) == 6 + 6 + 8 and train.models == tables["train"].models and len(train.models) == 11
    assert any("#" in k for k in train.prompt_ids) and len(set(train.prompt_ids)) == len(train)
    assert np.isnan(train.scores).any()  # the duplicated arc rows carry empty cells: kept as missing
    np.testing.assert_array_equal(np.isnan(train.scores), np.isnan(tables["train"].scores))
    assert not train.prompts[0].startswith("[")
    assert train.prices["gpt-4-1106-preview"] == {"input": 10.0, "output": 30.0}
    prices = json.loads((tmp_path / "out" / "prices.json").read_text())
    assert prices["recorded_on"] == "2024-03-01"
    with pytest.raises(FileExistsError, match="not empty"):
        convert_routerbench(source, tmp_path / "out", ROUTERBENCH_PRICES, progress=False)


def test_parse_list_text():
    assert parse_list_text("['a', 'b']", "x") == "a\n\nb"
    assert parse_list_text("['same', 'same']", "x") == "same"
    with pytest.raises(ValueError, match="row 3"):
        parse_list_text("__import__('os')", "row 3")


# --- write_sprout_dataset round trip ----------------------------------------------------------


def test_write_then_load_round_trip(tmp_path):
    source = load_routing_table(write_parquet(sprout_rows(5), tmp_path / "src" / "a.parquet"), prices=PRICES)
    source.scores[2, 1] = np.nan
    source.input_tokens[2, 1] = source.output_tokens[2, 1] = np.nan
    folder = write_sprout_dataset({"train": source, "test": source.subset([0, 1])}, tmp_path / "out",
                                  license="apache-2.0", prices_recorded_on="2025-01-31")
    back = load_routing_table(folder, split="train")
    assert back.models == MODELS and back.prompts == source.prompts and back.prompt_ids == source.prompt_ids
    np.testing.assert_array_equal(back.scores, source.scores)
    np.testing.assert_array_equal(back.output_tokens, source.output_tokens)
    assert back.prices == PRICES and back.metadata["prices_recorded_on"] == "2025-01-31"
    assert len(load_routing_table(folder, split="test")) == 2
    card = (folder / "README.md").read_text()
    assert "license: apache-2.0" in card and "path: data/test-*.parquet" in card and "| openai-gpt-4o-mini | 0.15 | 0.6 |" in card
    with pytest.raises(FileExistsError):
        write_sprout_dataset(source, folder)


def test_an_interrupted_write_leaves_no_half_folder(tmp_path, monkeypatch):
    import carrot_hub.data.writing as writing

    source = load_routing_table(write_parquet(sprout_rows(5), tmp_path / "src" / "a.parquet"), prices=PRICES)
    real = writing.table_to_arrow
    calls = []

    def fail_on_the_second_split(table, extra=None):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(table, extra)

    monkeypatch.setattr(writing, "table_to_arrow", fail_on_the_second_split)
    with pytest.raises(KeyboardInterrupt):
        write_sprout_dataset({"train": source, "test": source.subset([0, 1])}, tmp_path / "out")
    assert not (tmp_path / "out").exists() and [p.name for p in tmp_path.iterdir()] == ["src"]
    monkeypatch.setattr(writing, "table_to_arrow", real)
    assert len(load_routing_table(write_sprout_dataset({"train": source}, tmp_path / "out"), split="train")) == 5


# --- user logs ------------------------------------------------------------------------------


def _log_lines():
    records = []
    for i in range(6):
        for model in ("cheap-model", "big-model"):
            records.append({"prompt": f"prompt number {i}", "model": model, "score": 0.5 if model == "cheap-model" else 1.0,
                            "input_tokens": 10 + i, "output_tokens": 3 if model == "cheap-model" else 30,
                            "task": "qa" if i % 2 else "code"})
    return records


def _write_log(path, records, extra_lines=()):
    lines = [json.dumps(r) for r in records] + list(extra_lines)
    path.write_text("\n".join(lines) + "\n")
    return path


def test_logs_pivot_into_the_table(tmp_path):
    records = _log_lines()[:-1]  # the last prompt has no big-model record
    table = read_routing_logs(_write_log(tmp_path / "log.jsonl", records), prices={"cheap-model": {"input": 1, "output": 1},
                                                                                     "big-model": {"input": 5, "output": 5}})
    assert table.models == ["cheap-model", "big-model"] and len(table) == 6
    assert table.scores[0].tolist() == [0.5, 1.0] and table.output_tokens[3].tolist() == [3, 30]
    assert np.isnan(table.scores[5, 1]) and table.metadata["missing_cells"] == 1
    assert table.tasks[:2] == ["code", "qa"] and table.prompt_ids[0].startswith("sha1-")
    with pytest.raises(RoutingDataError, match="no record for model 'big-model'"):
        read_routing_logs(tmp_path / "log.jsonl", require_all_models=True)


def test_logs_line_that_is_not_json(tmp_path):
    path = _write_log(tmp_path / "log.jsonl", _log_lines()[:3], extra_lines=["{not json"])
    with pytest.raises(RoutingDataError, match=r"log.jsonl line 4: not valid JSON"):
        read_routing_logs(path)
    with pytest.warns(UserWarning, match="Skipped 1 of 4 lines"):
        table = read_routing_logs(path, on_error="skip")
    assert table.metadata["skipped"] == [{"line": 4, "reason": table.metadata["skipped"][0]["reason"]}]


@pytest.mark.parametrize(
    "change, message",
    [
        ({"score": 1.5}, "score 1.5 is outside"),
        ({"output_tokens": -1}, "output_tokens -1 is not a non-negative integer"),
        ({"input_tokens": 2.5}, "input_tokens 2.5 is not a non-negative integer"),
        ({"prompt": ""}, "prompt is empty"),
        ({"prompt": 42}, "prompt is not text"),
    ],
)
def test_logs_bad_records(tmp_path, change, message):
    records = _log_lines()
    records[4].update(change)
    with pytest.raises(RoutingDataError, match=rf"line 5: {message}"):
        read_routing_logs(_write_log(tmp_path / "log.jsonl", records))


def test_logs_duplicate_ids_and_pairs(tmp_path):
    records = _log_lines()[:4]
    records[0]["prompt_id"] = records[2]["prompt_id"] = "id-1"  # two different prompts under one id
    with pytest.raises(RoutingDataError, match="line 3: prompt_id 'id-1' was used earlier for a different prompt"):
        read_routing_logs(_write_log(tmp_path / "a.jsonl", records))
    records = _log_lines()[:2] + [_log_lines()[0]]
    with pytest.raises(RoutingDataError, match="line 3: a second record .* \\(first on line 1\\)"):
        read_routing_logs(_write_log(tmp_path / "b.jsonl", records))


def test_convert_logs_writes_a_loadable_folder(tmp_path):
    path = _write_log(tmp_path / "log.jsonl", _log_lines())
    tables = convert_routing_logs(path, tmp_path / "out", validation_fraction=0.34, seed=1,
                                  prices={"cheap-model": {"input": 1, "output": 1}, "big-model": {"input": 5, "output": 5}})
    assert set(tables) == {"train", "validation"}
    train = load_routing_table(tmp_path / "out", split="train")
    validation = load_routing_table(tmp_path / "out", split="validation")
    assert len(train) + len(validation) == 6 and not set(train.prompt_ids) & set(validation.prompt_ids)
    assert train.prices["big-model"] == {"input": 5.0, "output": 5.0}


def test_logs_keep_the_sources_own_split(tmp_path):
    """A published benchmark's official train/test split survives the converter (issue 12)."""
    records = _log_lines()
    for record in records:
        record["split"] = "test" if record["prompt"].endswith(("4", "5")) else "train"
    prices = {"cheap-model": {"input": 1, "output": 1}, "big-model": {"input": 5, "output": 5}}
    tables = convert_routing_logs(_write_log(tmp_path / "log.jsonl", records), tmp_path / "out", prices=prices)
    assert list(tables) == ["train", "test"] and [len(t) for t in tables.values()] == [4, 2]
    test = load_routing_table(tmp_path / "out", split="test")
    assert test.prompts == ["prompt number 4", "prompt number 5"] and test.split == "test"
    tables = convert_routing_logs(tmp_path / "log.jsonl", tmp_path / "cut", prices=prices, validation_fraction=0.25)
    assert set(tables) == {"train", "validation", "test"} and len(tables["test"]) == 2  # validation cut from train only
    records[3]["split"] = "test"  # prompt 1's second record disagrees with its first
    with pytest.raises(RoutingDataError, match="line 4: prompt .* is in split 'train' .* a prompt belongs to one split"):
        read_routing_logs(_write_log(tmp_path / "bad.jsonl", records))
    records[3]["split"] = "no spaces allowed"
    with pytest.raises(RoutingDataError, match="line 4: split 'no spaces allowed' must be a name"):
        read_routing_logs(_write_log(tmp_path / "bad.jsonl", records))


# --- seeded splits ----------------------------------------------------------------------------


def test_split_is_deterministic_and_stratified():
    tasks = ["a"] * 50 + ["b"] * 30 + ["c"] * 20
    first = split_indices(100, 0.2, seed=3, groups=tasks)
    again = split_indices(100, 0.2, seed=3, groups=tasks)
    other = split_indices(100, 0.2, seed=4, groups=tasks)
    assert all(np.array_equal(x, y) for x, y in zip(first, again))
    assert not np.array_equal(first[1], other[1])
    validation_tasks = [tasks[i] for i in first[1]]
    assert (validation_tasks.count("a"), validation_tasks.count("b"), validation_tasks.count("c")) == (10, 6, 4)
    train, validation = split_indices(100, 0.25, seed=0)
    assert len(validation) == 25 and len(np.intersect1d(train, validation)) == 0 and len(train) + len(validation) == 100
    with pytest.raises(ValueError, match="validation_fraction"):
        split_indices(10, 1.5)


def test_split_table(tiny_table):
    parts = split_table(tiny_table, 0.5, seed=0, stratify_by_task=True)
    assert len(parts["validation"]) == 3 and sorted(parts["validation"].tasks) == ["code", "commonsense", "science"]
    assert parts["train"].split == "train" and parts["validation"].metadata["split_from"]["seed"] == 0


@pytest.mark.parametrize("text", ["Infinity", "-Infinity", "NaN", "1e400", "1" + "0" * 400])
def test_logs_token_counts_that_are_not_finite_name_their_line_and_can_be_skipped(tmp_path, text):
    lines = [json.dumps(r) for r in _log_lines()[:4]]
    lines[2] = lines[2].replace('"output_tokens": 3', f'"output_tokens": {text}')
    assert text in lines[2]
    path = tmp_path / "log.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(RoutingDataError, match=r"log.jsonl line 3: output_tokens .* is not a non-negative integer"):
        read_routing_logs(path)
    with pytest.warns(UserWarning, match="Skipped 1 of 4 lines"):
        table = read_routing_logs(path, on_error="skip")
    assert table.metadata["skipped"][0]["line"] == 3 and np.isfinite(np.nan_to_num(table.output_tokens)).all()


def test_logs_line_that_is_not_utf8_is_named_and_can_be_skipped(tmp_path):
    path = tmp_path / "log.jsonl"
    lines = [json.dumps(r, ensure_ascii=False).encode() for r in _log_lines()[:3]]
    lines[1] = json.dumps({**_log_lines()[1], "prompt": "caf\u00e9"}, ensure_ascii=False).encode("latin-1")
    path.write_bytes(b"\n".join(lines) + b"\n")
    with pytest.raises(RoutingDataError, match="log.jsonl line 2: not UTF-8 text"):
        read_routing_logs(path)
    with pytest.warns(UserWarning, match="Skipped 1 of 3 lines"):
        read_routing_logs(path, on_error="skip")
