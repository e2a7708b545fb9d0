"""`carrot collect` on real answers (ZeroEval's, replayed): train and add-model read the result, kills lose nothing."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from carrot_hub.cli import main
from carrot_hub.data import load_routing_table
from carrot_hub.data.packaged import packaged_table_dir

from .collect_fixtures import SAMPLE_MODELS, replay_upstream, replay_upstreams_file, sample_prompt_file

ROOT = Path(__file__).resolve().parent.parent
PRICES = str(packaged_table_dir("zeroeval-2024") / "prices.json")
SCORERS = ["--scorer", "gsm8k=number", "--scorer", "cruxeval=exact"]


def test_replay_collect_then_train_and_add_model_read_the_table(tmp_path):
    prompts = sample_prompt_file(tmp_path / "prompts.jsonl")
    with replay_upstream() as (fake, server):
        upstreams = replay_upstreams_file(tmp_path / "upstreams.json", server)
        args = ["collect", str(prompts), "--upstreams", str(upstreams), "--prices", PRICES, "--no-progress", *SCORERS]
        assert main([*args, "--models", ",".join(SAMPLE_MODELS[:2]), "--out", str(tmp_path / "two")]) == 0
        assert main([*args, "--models", SAMPLE_MODELS[2], "--out", str(tmp_path / "third")]) == 0
        assert fake.config.replay.count_summary() == {"requests": 120, "cells": 120, "max_per_cell": 1,
                                                      "repeated_cells": 0}
    # The realised cost of each cell is the record's own: its token counts at the table's prices.
    collected = load_routing_table(str(tmp_path / "two"))
    record = load_routing_table(str(packaged_table_dir("zeroeval-2024")))
    rows = [record.prompt_ids.index(key) for key in collected.prompt_ids]
    truth = record.select_models(collected.models).subset(rows)
    np.testing.assert_array_equal(collected.output_tokens, truth.output_tokens)
    answers = pq.read_table(tmp_path / "two" / "answers" / "train.parquet").to_pylist()
    realised = sum(a["cost"] for a in answers)
    assert realised == pytest.approx(float(truth.cost().sum()), rel=1e-12)
    assert not np.any(np.isnan(collected.scores))

    assert main(["train", "--data", str(tmp_path / "two"), "--out", str(tmp_path / "router"), "--k-grid", "4,8",
                 "--folds", "2"]) == 0
    assert main(["add-model", str(tmp_path / "router"), SAMPLE_MODELS[2], str(tmp_path / "third"), "--input-price", "3",
                 "--output-price", "15", "--output", str(tmp_path / "router3"), "--min-rows", "20"]) == 0
    from carrot_hub import CarrotRouter

    router = CarrotRouter.from_pretrained(tmp_path / "router3")
    assert router.config.candidate_models == [*SAMPLE_MODELS[:2], SAMPLE_MODELS[2]]
    assert router.route(["What is 12 * 7?"], mu=0.0).models[0] in SAMPLE_MODELS


def _stored_answers(store: Path) -> int:
    try:
        return store.read_bytes().count(b'"type":"answer"')
    except FileNotFoundError:
        return 0


@pytest.mark.parametrize("kills", [2, pytest.param(5, marks=pytest.mark.slow)])
def test_sigkill_at_random_moments_loses_only_calls_in_flight(tmp_path, kills):
    prompts = sample_prompt_file(tmp_path / "prompts.jsonl")
    concurrency, rng = 2, random.Random(kills)
    with replay_upstream(latency_s=0.05) as (fake, server):
        upstreams = replay_upstreams_file(tmp_path / "upstreams.json", server, max_concurrency=concurrency)
        arguments = ["collect", str(prompts), "--upstreams", str(upstreams), "--prices", PRICES, "--no-progress",
                     *SCORERS]
        command = [sys.executable, "-m", "carrot_hub.cli", *arguments, "--out", str(tmp_path / "table")]
        store = tmp_path / "table.cells" / "cells.jsonl"
        for _ in range(kills):
            before = _stored_answers(store)
            process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            while _stored_answers(store) == before and process.poll() is None:
                time.sleep(0.01)
            # 120 cells, 6 in flight, 50 ms each: about a second of asking left at most.
            time.sleep(rng.uniform(0.0, 0.6 * (1 - before / 120)))
            process.send_signal(signal.SIGKILL)
            process.wait()
        assert _stored_answers(store) < 120, "every kill came too late to test anything"
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        counts = fake.config.replay.count_summary()
        # the uninterrupted run, on a second store
        assert main([*arguments, "--out", str(tmp_path / "reference")]) == 0
    assert counts["cells"] == 120 and counts["requests"] - 120 <= kills * concurrency * len(SAMPLE_MODELS)
    columns = ["key", "model", "answer", "input_tokens", "output_tokens", "cost", "score", "scorer", "status"]
    killed, reference = (pq.read_table(tmp_path / name / "answers" / "train.parquet", columns=columns)
                         for name in ("table", "reference"))
    assert killed.equals(reference)
    for name in ("scores", "input_tokens", "output_tokens"):
        np.testing.assert_array_equal(getattr(load_routing_table(str(tmp_path / "table")), name),
                                      getattr(load_routing_table(str(tmp_path / "reference")), name))
    info = json.loads((tmp_path / "table" / "collect.json").read_text())
    assert info["scorers"] == {"gsm8k": "number", "cruxeval": "exact"}
