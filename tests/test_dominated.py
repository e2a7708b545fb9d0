"""training.dominated: choosing the dominated pair, counting the dominated model's picks, summarising splits."""

import json

import numpy as np
import pytest

from training.dominated import brief, dominated_pair, main, markdown, pick_statistics, summarize_rows


def test_the_pair_is_the_largest_quality_margin_among_cheaper_and_better():
    models = ["cheap-good", "dear-bad", "dear-worse", "cheap-bad"]
    scores = np.array([[1.0, 1.0, 0.0, 0.0], [1.0, 0.0, 0.0, np.nan], [1.0, 0.0, 1.0, 0.0], [0.0, 1.0, 0.0, 0.0]])
    cost = np.tile([1.0, 5.0, 3.0, 0.5], (4, 1))
    pair = dominated_pair(models, scores, cost)
    # cheap-good (0.75, $1) dominates dear-bad (0.5, $5) and dear-worse (0.25, $3); cheap-bad is cheaper, so dominated by none
    assert (pair["cheaper_better"], pair["dominated"]) == ("cheap-good", "dear-worse")
    assert pair["quality_margin"] == pytest.approx(0.5) and pair["cost_ratio"] == pytest.approx(3.0)


def test_no_pair_when_quality_rises_with_cost():
    assert dominated_pair(["a", "b"], np.array([[0.0, 1.0], [1.0, 1.0]]), np.array([[1.0, 2.0], [1.0, 2.0]])) is None


def test_pick_statistics_count_picks_right_picks_and_wins_found():
    scores = np.array([[0.0, 1.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])  # column 1 (B) wins on rows 0 and 3
    choices = np.array([[1, 1, 0, 0], [1, 0, 1, 0]])  # μ = 0 first: B on rows 0, 1; then on rows 0, 2
    stats = pick_statistics(choices, scores, dominated=1, top=0)
    assert stats["b_pick_share"] == pytest.approx(4 / 8)
    assert stats["b_picks_right"] == pytest.approx(2 / 4)  # row 0 twice
    assert stats["b_picks_not_worse"] == pytest.approx(3 / 4)  # and the tie on row 2
    assert stats["b_picks_mu0"] == 2 and stats["b_picks_right_mu0"] == pytest.approx(0.5)
    assert stats["b_wins_found_mu0"] == pytest.approx(0.5) and stats["b_wins_share"] == pytest.approx(0.5)
    never = pick_statistics(np.zeros((2, 4), dtype=int), scores, dominated=1)
    assert never["b_pick_share"] == 0 and never["b_picks_right"] is None and never["b_wins_found_mu0"] == 0


def _row(seed, gain):
    entry = {"b_pick_share": 0.1, "b_picks_right": 0.5, "b_wins_found_mu0": 0.3, "b_wins_share": 0.2, "aiq_minus_zero_router": gain,
             "gap_closed": gain * 10, "oracle_minus_zero_router": 0.1}
    pair = {"cheaper_better": "a", "dominated": "b", "mean_quality": [0.8, 0.6], "cost_ratio": 3.0}
    return {"table": "t", "seed": seed, "pair": pair, "k": 8,
            "fitted": {"prior_shrink": 0.1}, "knn": {"none": entry, "prior_shrink": dict(entry, b_picks_right=None, aiq_minus_zero_router=2 * gain)},
            "baselines": {"random": {"aiq_minus_zero_router": 0.0, "gap_closed": 0.0}}}


def test_summary_averages_over_splits_and_skips_undefined_shares(tmp_path, capsys):
    rows = [_row(0, 0.01), _row(1, 0.03)]
    tables = summarize_rows(rows)
    assert tables["t"]["routers"]["knn:none"]["aiq_minus_zero_router"]["mean"] == pytest.approx(0.02)
    assert tables["t"]["routers"]["knn:prior_shrink"]["b_picks_right"] is None
    assert tables["t"]["routers"]["knn:prior_shrink"]["gain_minus_knn_none"]["mean"] == pytest.approx(0.02)  # paired per split
    assert "| knn:prior_shrink | 0.100 | – | 0.300 | 0.0400 ± 0.0200 |" in markdown(tables)
    short = brief(tables)["t"]
    assert short["pair"] == ["a", "b"] and short["knn:none"]["gap_closed"] == pytest.approx(0.2)
    log = tmp_path / "log.jsonl"
    log.write_text("".join(json.dumps(row) + "\n" for row in rows))
    assert main(["--summarize", str(log)]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["t"]["splits"] == 2


def test_bad_options_exit_2(capsys):
    assert main(["--data", "no-such-table", "--splits", "1"]) == 2
    assert "packaged tables" in capsys.readouterr().err
