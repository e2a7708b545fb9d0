"""load_routing_table on small local files in SPROUT's layout; one test per kind of bad input."""

import numpy as np
import pytest
from .data_files import MODELS, PRICES, sprout_rows, write_jsonl, write_parquet, write_prices

import carrot_hub
from carrot_hub.data import RoutingDataError, RoutingSourceError, load_routing_table


@pytest.fixture
def sprout_folder(tmp_path):
    folder = tmp_path / "sprout"
    write_parquet(sprout_rows(6), folder / "data" / "train-00000-of-00001.parquet")
    write_parquet(sprout_rows(3), folder / "data" / "test-00000-of-00001.parquet")
    write_prices(folder)
    return folder


def test_reads_local_folder_in_sprout_layout(sprout_folder):
    table = carrot_hub.load_routing_table(str(sprout_folder), split="train")
    assert table.models == MODELS  # discovered from the struct columns, in schema order
    assert len(table) == 6 and table.split == "train"
    assert table.prompt_ids[0] == "gpqa-0" and table.tasks[:3] == ["gpqa", "math", "musr"]
    assert table.scores.shape == table.input_tokens.shape == table.output_tokens.shape == (6, 3)
    assert table.scores[1, 2] == pytest.approx(0.3)
    assert table.input_tokens[4, 0] == 24 and table.output_tokens[0, 2] == 15
    assert table.prices == PRICES
    assert table.metadata["prices_recorded_on"] == "2025-02-01"
    assert load_routing_table(sprout_folder, split="test").prompt_ids == ["gpqa-0", "gpqa-1", "gpqa-2"]


def test_streaming_matches_whole_read_across_batches(sprout_folder):
    whole = load_routing_table(sprout_folder, split="train", batch_size=1000)
    streamed = load_routing_table(sprout_folder, split="train", streaming=True, batch_size=4)
    assert streamed.prompts == whole.prompts and streamed.models == whole.models
    np.testing.assert_array_equal(streamed.scores, whole.scores)
    np.testing.assert_array_equal(streamed.output_tokens, whole.output_tokens)


def test_jsonl_files_and_prices_argument(tmp_path):
    path = write_jsonl(sprout_rows(4), tmp_path / "rows.jsonl")
    table = load_routing_table([str(path)], split="validation", streaming=True, prices=PRICES)
    assert table.models == MODELS and len(table) == 4 and table.split == "validation"
    assert table.cost().shape == (4, 3)
    assert "prices_recorded_on" not in table.metadata


def test_null_score_is_missing_not_zero(tmp_path):
    rows = sprout_rows(3)
    rows[1][MODELS[0]] = {"score": None, "num_input_tokens": None, "num_output_tokens": None}
    table = load_routing_table(write_parquet(rows, tmp_path / "a.parquet"))
    assert np.isnan(table.scores[1, 0]) and not table.observed[1, 0]
    assert table.observed.sum() == 8


# --- bad input ---------------------------------------------------------------------------------


def test_model_column_lacking_a_field(tmp_path):
    rows = sprout_rows(3)
    for row in rows:
        del row[MODELS[1]]["num_output_tokens"]
    with pytest.raises(RoutingDataError, match=r"'wxai-llama-3-1-8b-instruct' lacks \['num_output_tokens'\]"):
        load_routing_table(write_parquet(rows, tmp_path / "a.parquet"))


def test_cell_lacking_a_field_in_one_row(tmp_path):
    rows = sprout_rows(3)
    del rows[2][MODELS[0]]["num_input_tokens"]
    with pytest.raises(RoutingDataError, match=r"Row 2 \(key 'gpqa-2'\).*lacks num_input_tokens"):
        load_routing_table(write_jsonl(rows, tmp_path / "a.jsonl"))


def test_score_outside_unit_interval(tmp_path):
    rows = sprout_rows(4)
    rows[3][MODELS[2]]["score"] = 7.0
    path = write_parquet(rows, tmp_path / "a.parquet")
    with pytest.raises(RoutingDataError, match=r"Row 3 .*score = 7 is outside \[0, 1\].*on_error='skip'"):
        load_routing_table(path)


@pytest.mark.parametrize("value, shown", [(-3, "-3"), (12.5, "12.5")])
def test_negative_or_non_integer_tokens(tmp_path, value, shown):
    rows = sprout_rows(3)
    rows[1][MODELS[0]]["num_output_tokens"] = value
    with pytest.raises(RoutingDataError, match=rf"Row 1 .*num_output_tokens = {shown} is not a non-negative integer"):
        load_routing_table(write_jsonl(rows, tmp_path / "a.jsonl"))


@pytest.mark.parametrize("prompt, reason", [("   ", "prompt is empty"), (None, "prompt is not text")])
def test_empty_or_missing_prompt(tmp_path, prompt, reason):
    rows = sprout_rows(3)
    rows[0]["prompt"] = prompt
    with pytest.raises(RoutingDataError, match=rf"Row 0 .*{reason}"):
        load_routing_table(write_parquet(rows, tmp_path / "a.parquet"))


def test_prompt_column_not_text(tmp_path):
    rows = sprout_rows(3)
    for i, row in enumerate(rows):
        row["prompt"] = i
    with pytest.raises(RoutingDataError, match="'prompt' column holds int64, not text"):
        load_routing_table(write_parquet(rows, tmp_path / "a.parquet"))


def test_duplicate_prompt_ids_across_batches(tmp_path):
    rows = sprout_rows(5)
    rows[4]["key"] = "gpqa-1"
    path = write_parquet(rows, tmp_path / "a.parquet")
    with pytest.raises(RoutingDataError, match="Row 4 .*duplicate prompt id 'gpqa-1'"):
        load_routing_table(path, streaming=True, batch_size=2)


def test_model_present_in_some_rows_only(tmp_path):
    rows = sprout_rows(4)
    del rows[2][MODELS[1]]  # a JSON line without that model: a null cell
    with pytest.raises(RoutingDataError, match="'wxai-llama-3-1-8b-instruct' is absent from this row"):
        load_routing_table(write_jsonl(rows, tmp_path / "a.jsonl"))


def test_skip_reports_every_bad_row(tmp_path):
    rows = sprout_rows(8)
    rows[1][MODELS[0]]["score"] = -0.5
    rows[3]["prompt"] = ""
    rows[6]["key"] = "gpqa-0"
    path = write_parquet(rows, tmp_path / "a.parquet")
    with pytest.warns(UserWarning, match="Skipped 3 of 8 rows"):
        table = load_routing_table(path, on_error="skip", batch_size=3)
    assert len(table) == 5 and "gpqa-1" not in table.prompt_ids
    skipped = table.metadata["skipped"]
    assert [s["row"] for s in skipped] == [1, 3, 6]
    assert "outside [0, 1]" in skipped[0]["reason"] and "empty" in skipped[1]["reason"]
    assert "duplicate" in skipped[2]["reason"]
    assert table.metadata["rows_read"] == 8


def test_no_model_columns(tmp_path):
    rows = [{"key": "a", "prompt": "hello"}]
    with pytest.raises(RoutingDataError, match="no model columns"):
        load_routing_table(write_parquet(rows, tmp_path / "a.parquet"))


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(RoutingSourceError, match="No such file or folder"):
        load_routing_table(str(tmp_path / "nowhere.parquet"))
    with pytest.raises(RoutingSourceError, match="No such file or folder"):
        load_routing_table(tmp_path / "no" / "folder")


def test_unknown_hub_id_offline_is_explained():
    with pytest.raises(RoutingSourceError, match="HF_HUB_OFFLINE.*local folder"):
        load_routing_table("carrot-test-org/no-such-dataset", streaming=True)


def test_unknown_split_names_the_problem(sprout_folder):
    with pytest.raises(RoutingSourceError, match="split 'validation'"):
        load_routing_table(sprout_folder, split="validation")


def test_bad_arguments(sprout_folder):
    with pytest.raises(ValueError, match="on_error"):
        load_routing_table(sprout_folder, on_error="ignore")
    with pytest.raises(ValueError, match="price"):
        load_routing_table(write_parquet(sprout_rows(2), sprout_folder.parent / "x" / "a.parquet"),
                           prices={MODELS[0]: {"input": -1, "output": 1}})


# ------------------------------------------- files datasets cannot read: name the file and line


def _read_error(source, **options) -> str:
    with pytest.raises(RoutingDataError) as raised:
        load_routing_table(source, **options)
    return str(raised.value)


@pytest.mark.parametrize("streaming", [False, True])
def test_empty_and_unreadable_files_are_named(tmp_path, streaming):
    empty_jsonl = tmp_path / "empty.jsonl"
    empty_jsonl.write_text("\n")
    message = _read_error(str(empty_jsonl), streaming=streaming)
    assert str(empty_jsonl) in message and "no rows" in message
    for name, content in (("empty.parquet", b""), ("binary.parquet", b"\x00\x01 not parquet" * 50)):
        (tmp_path / name).write_bytes(content)
        assert f"{tmp_path / name} is not a readable parquet file" in _read_error(str(tmp_path / name), streaming=streaming)


@pytest.mark.parametrize("streaming", [False, True])
def test_malformed_or_non_utf8_jsonl_line_is_named(tmp_path, streaming):
    path = write_jsonl(sprout_rows(4), tmp_path / "a.jsonl")
    lines = path.read_text().splitlines()
    path.write_text("\n".join([*lines[:2], lines[2][:-7], lines[3]]) + "\n")
    assert f"{path} line 3 is not valid JSON" in _read_error(str(path), streaming=streaming)
    path.write_bytes(b"\n".join([lines[0].encode(), lines[1].replace("Question", "Qu\u00e9stion").encode("latin-1")]) + b"\n")
    assert f"{path} line 2 is not UTF-8 text" in _read_error(str(path), streaming=streaming)


@pytest.mark.parametrize("streaming", [False, True])
def test_files_with_different_model_columns_are_named(tmp_path, streaming):
    first = write_parquet(sprout_rows(3), tmp_path / "data" / "train-0.parquet")
    rows = sprout_rows(3)
    for row in rows:
        row["key"] += "-b"
        row["another-model"] = dict(row[MODELS[0]])
    second = write_parquet(rows, tmp_path / "data" / "train-1.parquet")
    message = _read_error([str(first), str(second)], streaming=streaming)
    assert f"{second} has columns ['another-model'] that train-0.parquet lacks" in message


def test_text_score_and_numeric_prompt_name_their_row_and_can_be_skipped(tmp_path):
    rows = sprout_rows(5)
    rows[1][MODELS[0]]["score"] = "high"
    rows[3]["prompt"] = 42
    path = write_jsonl(rows, tmp_path / "a.jsonl")
    assert "Row 1 (key 'gpqa-1'): 'openai-gpt-4o-mini'.score = 'high' is not a number" in _read_error(str(path))
    with pytest.warns(UserWarning, match="Skipped 2 of 5 rows"):
        table = load_routing_table(str(path), on_error="skip")
    assert [s["row"] for s in table.metadata["skipped"]] == [1, 3]
    assert "prompt is not text" in table.metadata["skipped"][1]["reason"] and len(table) == 3
