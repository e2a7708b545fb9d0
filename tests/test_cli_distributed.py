"""`carrot route` under `accelerate launch` with two CPU processes writes the same single output as one process."""

import json
import os
import subprocess
import sys

import pytest

from carrot_hub.cli import main

from .conftest import TINY_PROMPTS

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
# accelerate is a dev dependency: run its launcher with this interpreter (its script may not be on PATH).
LAUNCH = [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
          "--dynamo_backend", "no", "-m", "carrot_hub.cli", "route"]


def test_two_processes_write_one_output_in_input_order(saved_knn_router, tmp_path):
    prompts = [f"{p} (copy {i})" for i in range(4) for p in TINY_PROMPTS][:23]  # odd count: uneven shards
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps({"id": i, "text": p}) + "\n" for i, p in enumerate(prompts)))
    options = ["--model", str(saved_knn_router), "--input", str(source), "--field", "text", "--mu", "0.4",
               "--batch-size", "4", "--chunk-size", "5"]
    together = tmp_path / "two.jsonl"
    done = subprocess.run([*LAUNCH, *options, "--output", str(together)], capture_output=True, text=True, env=ENV,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    alone = tmp_path / "one.jsonl"
    assert main(["route", *options, "--output", str(alone), "--no-progress"]) == 0  # one process, in this one
    records = [json.loads(line) for line in together.read_text().splitlines()]
    assert [r["index"] for r in records] == list(range(len(prompts)))
    assert [r["model"] for r in records] == [json.loads(line)["model"] for line in alone.read_text().splitlines()]
    assert together.read_text() == alone.read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl", "one.jsonl", "two.jsonl"]  # no part files left


@pytest.mark.slow
def test_a_bad_row_in_one_shard_fails_all_and_leaves_no_output(saved_knn_router, tmp_path):
    source = tmp_path / "in.jsonl"
    rows = [{"prompt": p} for p in TINY_PROMPTS]
    rows[3] = {"text": "no prompt field"}  # belongs to process 1
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    output = tmp_path / "out.jsonl"
    done = subprocess.run([*LAUNCH, "--model", str(saved_knn_router), "--input", str(source), "--output", str(output)],
                          capture_output=True, text=True, env=ENV, timeout=300)
    assert done.returncode != 0
    assert "line 4 has no field 'prompt'" in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"]
