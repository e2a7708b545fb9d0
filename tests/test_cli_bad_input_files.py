"""`carrot route` on damaged input files: exit 2 with one line naming the file and the line or row,
and never an output with fewer records than the input (issue 15, items 2, 6 and 10)."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from carrot_hub.prompt_sources import InputError, PromptSource

from .cli_helpers import assert_one_line_error, run


@pytest.fixture
def output(tmp_path):
    previous = tmp_path / "keep.jsonl"
    previous.write_text("the user's earlier results\n")
    return previous


def _route_fails(saved_knn_router, output, capsys, *options):
    code, out, err = run(["route", "--model", saved_knn_router, "--output", output, *options], capsys)
    assert code == 2, err
    assert output.read_text() == "the user's earlier results\n"
    return err


def test_null_prompt_in_jsonl_names_its_line(saved_knn_router, output, tmp_path, capsys):
    data = tmp_path / "in.jsonl"
    data.write_text('{"prompt": "fine"}\n{"prompt": null}\n{"prompt": "also fine"}\n')
    err = _route_fails(saved_knn_router, output, capsys, "--jsonl", data)
    assert_one_line_error(err, f"{data} line 2", "null")


def test_null_prompt_in_parquet_names_its_row(saved_knn_router, output, tmp_path, capsys):
    data = tmp_path / "in.parquet"
    pq.write_table(pa.table({"prompt": ["fine", "also fine", None]}), data)
    err = _route_fails(saved_knn_router, output, capsys, "--parquet", data)
    assert_one_line_error(err, f"{data} row 3", "null")


def test_each_process_reports_the_null_prompts_of_its_own_rows(tmp_path):
    data = tmp_path / "in.jsonl"
    data.write_text('{"prompt": "a"}\n{"prompt": null}\n{"prompt": "c"}\n{"prompt": "d"}\n')
    source = PromptSource("jsonl", str(data))
    assert list(source.iter_prompts(rank=0, world_size=2)) == [(0, "a"), (2, "c")]
    with pytest.raises(InputError, match="line 2: the prompt is null"):
        list(source.iter_prompts(rank=1, world_size=2))


def test_prompt_of_zero_width_characters_is_empty(saved_knn_router, output, tmp_path, capsys):
    data = tmp_path / "in.txt"
    data.write_text("fine\n\u200b\u200b\n", encoding="utf-8")
    err = _route_fails(saved_knn_router, output, capsys, "--file", data)
    assert_one_line_error(err, f"{data} line 2", "empty")


@pytest.mark.parametrize("suffix, option", [(".txt", "--file"), (".jsonl", "--jsonl")])
def test_non_utf8_file_names_the_file_and_line(saved_knn_router, output, tmp_path, capsys, suffix, option):
    data = tmp_path / f"latin1{suffix}"
    lines = ["fine", "caf\u00e9 au lait"]
    if suffix == ".jsonl":
        lines = [json.dumps({"prompt": line}, ensure_ascii=False) for line in lines]
    data.write_bytes("\n".join(lines).encode("latin-1") + b"\n")
    err = _route_fails(saved_knn_router, output, capsys, option, data)
    assert_one_line_error(err, f"{data} line 2 is not UTF-8")


def test_utf8_byte_order_mark_is_not_part_of_the_first_prompt(tmp_path):
    data = tmp_path / "bom.txt"
    data.write_bytes("\ufeffhello\nworld\n".encode("utf-8"))
    assert list(PromptSource("text", str(data)).iter_prompts()) == [(0, "hello"), (1, "world")]


def test_route_dash_with_stdin_closed_says_so(saved_knn_router, monkeypatch, capsys):
    monkeypatch.setattr("sys.stdin", None)
    code, _, err = run(["route", "--model", saved_knn_router, "-"], capsys)
    assert code == 2
    assert_one_line_error(err, "Standard input is closed")
