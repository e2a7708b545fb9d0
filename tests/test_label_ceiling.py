"""The label-ceiling benchmark's patterns (training/evaluation/label_ceiling.py) on the 120-answer sample."""

from __future__ import annotations

import numpy as np
import pytest

from carrot_hub.data.routing_table import RoutingTable
from training.evaluation.label_ceiling import PATTERNS, label_patterns, remember_cells

from .collect_fixtures import SAMPLE_MODELS, sample_knn_router, sample_rows


def test_patterns_label_what_they_say_and_are_remembered():
    rows = sample_rows()
    prompts = sorted({row["prompt"] for row in rows})
    memory, stream_prompts = prompts[::2], prompts[1::2]
    router = sample_knn_router(rows, memory)
    score_of = {(row["prompt"], row["model"]): row["score"] for row in rows}
    n, m = len(stream_prompts), len(SAMPLE_MODELS)
    scores = np.array([[score_of.get((p, model), np.nan) for model in SAMPLE_MODELS] for p in stream_prompts], float)
    stream = RoutingTable(prompts=stream_prompts, prompt_ids=[f"k{i}" for i in range(n)], tasks=["t"] * n,
                          models=list(SAMPLE_MODELS), scores=scores, input_tokens=np.full((n, m), 20.0),
                          output_tokens=np.full((n, m), 50.0))
    patterns = label_patterns(router, stream, seed=0)
    assert list(patterns) == list(PATTERNS)
    scored = ~np.isnan(scores)
    assert len(patterns["every model"]) == int(scored.sum())
    chosen = dict(patterns["chosen"])
    assert len(chosen) == len(patterns["chosen"])  # one label a prompt
    explored_all = patterns["explored 100%"]
    for row in range(n):  # the chosen model and one other, where scored
        columns = [j for i, j in explored_all if i == row]
        assert len(set(columns)) == len(columns) <= 2
        if row in chosen:
            assert chosen[row] in columns
    sampled = {i for i, _ in patterns["explored 20%"]}
    assert set(patterns["explored 20%"]) <= set(explored_all) and 0 < len(sampled) < n
    assert {i for i, _ in patterns["two random 20%"]} <= sampled
    assert set(patterns["explored 50%"]) <= set(explored_all)
    assert 0.25 * len(patterns["chosen"]) < len(patterns["explored 50%"]) < 1.75 * len(patterns["chosen"])
    before = router.config.knn_memory_size
    remember_cells(router, stream, patterns["explored 20%"])
    assert router.config.knn_memory_size == before + len(sampled)


@pytest.mark.parametrize("shares", ["0.2,abc", "0,0.5", "1.5"])
def test_label_curve_shares_must_be_in_zero_one(shares, capsys):
    from training.evaluation.label_ceiling import main

    with pytest.raises(SystemExit) as stopped:
        main(["--label-curve", shares])
    assert stopped.value.code == 2
    assert "--label-curve takes comma-separated shares in (0, 1]" in capsys.readouterr().err
