"""The `carrot` command: routing from every kind of input, output formats, exit codes and one-line errors."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from carrot_hub.cli import EXTERNAL_COMMANDS
from carrot_hub.default import default_cache_dir
from carrot_hub.modeling_carrot import CarrotRouter

from .cli_helpers import assert_one_line_error, records, run
from .conftest import TINY_PROMPTS

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


@pytest.fixture(scope="module")
def router(saved_knn_router):
    return CarrotRouter.from_pretrained(saved_knn_router)


# --------------------------------------------------------------------------------- success


def test_route_jsonl_matches_router(saved_knn_router, router, capsys):
    code, out, err = run(["route", "--model", saved_knn_router, "--format", "jsonl", "--mu", "0.3", *TINY_PROMPTS], capsys)
    assert code == 0, err
    got = records(out)
    expected = router.route(TINY_PROMPTS, mu=0.3)
    assert [r["index"] for r in got] == list(range(len(TINY_PROMPTS)))
    assert [r["model"] for r in got] == expected.models
    for row, record in enumerate(got):
        assert record["mu"] == 0.3
        assert set(record["predictions"]) == set(router.config.candidate_models)
        assert record["cost"] == pytest.approx(float(expected.chosen_cost[row]), rel=1e-6)
        assert record["quality"] == pytest.approx(float(expected.chosen_quality[row]))


def test_route_table_shows_every_candidate(saved_knn_router, router, capsys):
    code, out, err = run(["route", "--model", saved_knn_router, "--mu", "0.9", TINY_PROMPTS[0]], capsys)
    assert code == 0, err
    chosen = router.route([TINY_PROMPTS[0]], mu=0.9).models[0]
    assert f"{chosen} " in out.splitlines()[1]
    for name in router.config.candidate_models:
        assert name in out
    assert out.count("*") == 1  # exactly one chosen row in the per-candidate block


def test_route_options_prices_allowed_max_cost(saved_knn_router, router, tmp_path, capsys):
    prices = {"big-model": {"input": 0.0, "output": 0.0}}
    prices_file = tmp_path / "prices.yaml"
    prices_file.write_text("big-model:\n  input: 0.0\n  output: 0.0\n")
    for given in (json.dumps(prices), prices_file):
        code, out, err = run(["route", "--model", saved_knn_router, "--format", "jsonl", "--prices", given,
                              *TINY_PROMPTS], capsys)
        assert code == 0, err
        assert [r["model"] for r in records(out)] == router.route(TINY_PROMPTS, prices=prices).models
        assert all(r["predictions"]["big-model"]["cost"] == 0 for r in records(out))
    code, out, err = run(["route", "--model", saved_knn_router, "--format", "jsonl", "--mu", "0",
                          "--allowed", "mid-model,small-model", *TINY_PROMPTS], capsys)
    assert code == 0, err
    assert {r["model"] for r in records(out)} <= {"mid-model", "small-model"}
    code, out, err = run(["route", "--model", saved_knn_router, "--format", "jsonl", "--mu", "0",
                          "--max-cost", "0.001", *TINY_PROMPTS], capsys)
    assert code == 0, err
    assert all(r["cost"] <= 0.001 for r in records(out))


def test_route_inputs_text_jsonl_parquet_agree(saved_knn_router, tmp_path, capsys):
    text = tmp_path / "prompts.txt"
    text.write_text("\n".join(TINY_PROMPTS[:3]) + "\n\n" + "\n".join(TINY_PROMPTS[3:]) + "\n")
    jsonl = tmp_path / "prompts.jsonl"
    jsonl.write_text("\n".join(json.dumps({"id": i, "text": p}) for i, p in enumerate(TINY_PROMPTS)) + "\n")
    parquet = tmp_path / "prompts.parquet"
    pq.write_table(pa.table({"text": TINY_PROMPTS, "id": list(range(6))}), parquet)
    outputs = []
    for option in (["--file", text], ["--jsonl", jsonl, "--field", "text"], ["--parquet", parquet, "--field", "text"],
                   ["--input", parquet, "--field", "text"], TINY_PROMPTS):
        out_file = tmp_path / "out.jsonl"
        code, _, err = run(["route", "--model", saved_knn_router, "--output", out_file, *option], capsys)
        assert code == 0, err
        outputs.append(out_file.read_text())
    assert len(records(outputs[0])) == len(TINY_PROMPTS)
    assert all(output == outputs[0] for output in outputs)


def test_help_of_every_subcommand(capsys):
    for command in ("route", "calibrate"):
        code, out, _ = run([command, "--help"], capsys)
        assert code == 0
        assert "--max-cost" in out and "--model" in out
    code, out, _ = run(["--help"], capsys)
    assert code == 0
    for command in ("route", "calibrate", *EXTERNAL_COMMANDS):
        assert command in out


def test_missing_external_command_is_a_clear_failure(monkeypatch, capsys):
    monkeypatch.setitem(EXTERNAL_COMMANDS, "train", ("no_such_module_xyz", "add", "run", "train"))
    code, out, err = run(["train", "--data", "x"], capsys)
    assert code == 1
    assert_one_line_error(err, "carrot train", "not available", "no_such_module_xyz")


def test_calibrate_solves_for_spend_and_quality(saved_knn_router, router, capsys):
    code, out, err = run(["calibrate", "--model", saved_knn_router, "--json", "--grid", "5", *TINY_PROMPTS], capsys)
    assert code == 0, err
    curve = json.loads(out)["curve"]
    assert [p["mu"] for p in curve] == [0.0, 0.25, 0.5, 0.75, 1.0]
    spends = [p["cost_per_1000"] for p in curve]
    assert spends == sorted(spends, reverse=True) and spends[0] > spends[-1]
    target = (spends[0] + spends[-1]) / 2
    code, out, err = run(["calibrate", "--model", saved_knn_router, "--target-spend", target, *TINY_PROMPTS], capsys)
    assert code == 0, err
    mu = float(out.strip().splitlines()[-1].split("=")[1])
    decision = router.route(TINY_PROMPTS, mu=mu)
    assert float(decision.chosen_cost.mean()) * 1000 <= target + 1e-9
    below = router.route(TINY_PROMPTS, mu=max(0.0, mu - 1e-3))  # a slightly smaller μ overspends
    assert float(below.chosen_cost.mean()) * 1000 > target
    code, out, err = run(["calibrate", "--model", saved_knn_router, "--json", "--target-quality", "0.6",
                          *TINY_PROMPTS], capsys)
    assert code == 0, err
    solved = json.loads(out)["solved"]
    assert solved["mean_quality"] >= 0.6
    assert float(router.route(TINY_PROMPTS, mu=min(1.0, solved["mu"] + 1e-3)).chosen_quality.mean()) < 0.6


def test_calibrate_unreachable_target_fails_clearly(saved_knn_router, capsys):
    code, _, err = run(["calibrate", "--model", saved_knn_router, "--target-quality", "1", "--allowed", "small-model",
                        *TINY_PROMPTS], capsys)
    assert code == 1
    assert_one_line_error(err, "No μ reaches")


# --------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "options, fragment",
    [
        (["--mu", "2"], "--mu"),
        (["--mu", "abc"], "--mu"),
        (["--max-cost", "-1"], "--max-cost"),
        (["--max-cost", "nan"], "--max-cost"),
        (["--batch-size", "0"], "--batch-size"),
        (["--threads", "-2"], "--threads"),
        (["--prices", "{not json"], "not valid JSON"),
        (["--prices", "/no/such/prices.json"], "Cannot read the prices file"),
        (["--prices", '{"no-such-model": {"input": 1, "output": 1}}'], "no-such-model"),
        (["--prices", '{"big-model": {"input": -1}}'], "big-model"),
        (["--allowed", "no-such-model"], "no-such-model"),
        (["--format", "xml"], "--format"),
    ],
)
def test_bad_option_values_exit_2(saved_knn_router, tmp_path, capsys, options, fragment):
    output = tmp_path / "out.jsonl"
    code, out, err = run(["route", "--model", saved_knn_router, "--output", output, *options, "hello"], capsys)
    assert code == 2
    assert_one_line_error(err, fragment)
    assert not output.exists() and list(tmp_path.iterdir()) == []


def test_bad_inputs_exit_2_and_leave_no_output(saved_knn_router, tmp_path, capsys):
    missing_field = tmp_path / "in.jsonl"
    missing_field.write_text('{"prompt": "fine"}\n{"text": "no prompt here"}\n')
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    empty_prompt = tmp_path / "blank.jsonl"
    empty_prompt.write_text('{"prompt": "   "}\n')
    previous = tmp_path / "keep.jsonl"
    previous.write_text("the user's earlier results\n")
    cases = [
        (["--jsonl", missing_field], "line 2 has no field 'prompt'"),
        (["--file", empty], "No prompts"),
        (["--jsonl", empty_prompt], "empty"),
        (["--file", tmp_path / "nope.txt"], "no such file"),
        (["--input", tmp_path / "nope.jsonl"], "no such file"),
        (["--file", empty, "also-a-prompt"], "one way only"),
    ]
    for options, fragment in cases:
        code, out, err = run(["route", "--model", saved_knn_router, "--output", previous, *options], capsys)
        assert code == 2, (options, err)
        assert_one_line_error(err, fragment)
        assert previous.read_text() == "the user's earlier results\n"  # never half-overwritten
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blank.jsonl", "empty.txt", "in.jsonl", "keep.jsonl"]


def test_router_that_cannot_be_loaded_exits_1(tmp_path, capsys):
    code, _, err = run(["route", "--model", tmp_path / "no-router-here", "hello"], capsys)
    assert code == 1
    assert_one_line_error(err, "does not exist")
    (tmp_path / "not-a-router").mkdir()
    code, _, err = run(["route", "--model", tmp_path / "not-a-router", "hello"], capsys)
    assert code == 1
    assert_one_line_error(err, "no config.json")
    code, _, err = run(["route", "--model", "some-org/some-router-not-downloaded", "hello"], capsys)
    assert code == 1
    assert_one_line_error(err, "offline")


def test_debug_shows_traceback(tmp_path, capsys):
    code, _, err = run(["route", "--debug", "--model", tmp_path / "missing", "hello"], capsys)
    assert code == 1 and "Traceback" in err


# ------------------------------------------------------------------------- the console script


def test_console_script_routes_stdin_and_reports_errors(saved_knn_router, tmp_path):
    console_script = str(Path(sys.executable).with_name("carrot"))  # installed beside this interpreter
    done = subprocess.run([console_script, "route", "--model", str(saved_knn_router), "--format", "jsonl", "--mu", "0.2"],
                          input="\n".join(TINY_PROMPTS) + "\n", capture_output=True, text=True, env=ENV, timeout=120)
    assert done.returncode == 0, done.stderr
    assert [r["index"] for r in records(done.stdout)] == list(range(len(TINY_PROMPTS)))


def test_module_entry_point_bad_mu(saved_knn_router):
    done = subprocess.run([sys.executable, "-m", "carrot_hub.cli", "route", "--model", str(saved_knn_router),
                           "--mu", "2", "hi"], capture_output=True, text=True, env=ENV, timeout=120)
    assert done.returncode == 2
    assert_one_line_error(done.stderr, "--mu")


def test_output_equal_to_the_input_file_is_refused(tmp_path, capsys):
    """`carrot route --file p.txt --output p.txt` would replace the prompts with decisions (issue 15.3)."""
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(TINY_PROMPTS) + "\n")
    before = prompts.read_text()
    for option in ("--file", "--input"):
        code, out, err = run(["route", option, prompts, "--output", tmp_path / "." / "prompts.txt"], capsys)
        assert code == 2
        assert_one_line_error(err, "is the input file", "prompts")
    assert prompts.read_text() == before


def test_no_progress_means_no_bar_at_all(tmp_path, monkeypatch, capsys):
    """Under --no-progress, datasets' "Generating train split" and transformers' weight bars stay quiet too (issue 15.16)."""
    monkeypatch.setenv("CARROT_HUB_CACHE", str(tmp_path))  # the default router is built here, from scratch
    code, out, err = run(["route", "--no-progress", "--format", "jsonl", "--dtype", "float32", "Explain why the sky is blue."], capsys)
    assert code == 0, err
    assert len(records(out)) == 1
    assert "%|" not in err and "Generating" not in err and "Loading weights" not in err, err


# ---------------------------------------------------------------------------- static encoder


def test_route_with_the_static_default_router_flags_the_fallback(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CARROT_HUB_CACHE", str(tmp_path))
    code, out, err = run(["route", "--encoder", "static", "--format", "jsonl", "--no-progress", TINY_PROMPTS[0], "☃ 🥕"], capsys)
    assert code == 0, err
    got = records(out)
    assert [r["fallback_embedding"] for r in got] == [False, True]
    assert (default_cache_dir("static") / "model.safetensors").is_file()  # under CARROT_HUB_CACHE
    code, out, err = run(["route", "--encoder", "static", "--no-progress", "☃ 🥕"], capsys)
    assert code == 0 and "[no known token: fallback embedding]" in out


@pytest.mark.parametrize("options, fragment", [
    (["--encoder", "word2vec"], "--encoder"),
    (["--encoder", "static", "--model", "some/router"], "--encoder picks the embedded default router"),
])
def test_bad_encoder_option_exits_2(options, fragment, capsys):
    for command in ("route", "calibrate"):
        code, _, err = run([command, *options, "hello"], capsys)
        assert code == 2
        assert_one_line_error(err, fragment)
