"""training.ablation: switching a fitted router's layers, and the rule that keeps a layer on."""

import itertools

import pytest
import torch

from training.ablation import LAYERS, combination_name, fitted_layers, keep_layers, set_layers, summarize_table

from .reliability_fixtures import clustered_knn_router


def test_switching_layers_off_and_on_restores_the_fit():
    router, _, _, _, _ = clustered_knn_router()
    fitted = fitted_layers(router)
    set_layers(router, fitted, [])
    assert router.config.prior_shrink == 0.0 and router.config.shrink_floor == 1.0 and router.config.ood_pessimism == 0.0
    identity = torch.linspace(0, 1, router.reliability.calibration_x.shape[1])
    assert torch.equal(router.reliability.calibration_x[0], identity) and torch.equal(router.reliability.calibration_y[0], identity)
    set_layers(router, fitted, LAYERS)
    assert router.config.prior_shrink == fitted["prior_shrink"] and router.config.shrink_floor == fitted["ood_shrink"]
    assert torch.equal(router.reliability.calibration_y, fitted["calibration"][1])


def _row(kind, split, gains):
    scores = {combination_name(()): 0.0}
    for size in range(1, len(LAYERS) + 1):
        for combo in itertools.combinations(LAYERS, size):
            scores[combination_name(combo)] = sum(gains[layer] for layer in combo)
    return {"table": "t", "kind": kind, "split": split, "aiq_minus_zero_router": scores, "fitted": {}}


@pytest.mark.parametrize("held_out_loss, kept", [(0.0, True), (-0.01, False)])
def test_a_layer_stays_on_only_where_it_wins_and_loses_no_held_out_task(held_out_loss, kept):
    rows = [_row("resplit", seed, {"calibration": 0.0, "prior_shrink": 0.002 + 0.001 * seed, "ood_shrink": -0.001, "caution": 0.001})
            for seed in range(3)]
    rows.append(_row("held_out_task", "x", {"calibration": 0.0, "prior_shrink": held_out_loss, "ood_shrink": 0.02, "caution": -0.02}))
    verdict = keep_layers({"t": summarize_table(rows)})
    assert verdict["prior_shrink"]["keep"] is kept
    assert not verdict["calibration"]["keep"] and not verdict["ood_shrink"]["keep"] and not verdict["caution"]["keep"]


def test_layers_are_added_forward_while_each_addition_wins_on_every_table():
    from training.ablation import choose_layers

    gains = {"calibration": 0.0005, "prior_shrink": 0.002, "ood_shrink": -0.001, "caution": 0.001}
    tables = {}
    for table, scale in (("a", 1.0), ("b", 0.5)):
        rows = [_row("resplit", seed, {layer: value * scale * (1 + 0.1 * seed) for layer, value in gains.items()})
                for seed in range(4)]
        tables[table] = summarize_table(rows)
    chosen = choose_layers(tables)
    assert chosen["layers"] == ["prior_shrink", "caution", "calibration"]  # largest worst-table gain first
    assert [step["from"] for step in chosen["steps"]][:2] == ["none", "prior_shrink"]
    assert not chosen["steps"][-1]["options"]["ood_shrink"]["eligible"]
