"""Baselines: reference k-NN (CV and regression), RouteLLM MF, random mixing, oracle curve."""

import numpy as np
import pytest
import torch

from carrot_hub.data import RoutingTable
from training.evaluation import metrics
from training.evaluation.baselines import (
    knn_cv_pick,
    knn_regress,
    mf_curve,
    random_mixing_curve,
    reference_knn_predictions,
    train_mf,
    trained_baselines,
)
from training.evaluation.curves import ground_truth, oracle_curve
from training.evaluation.evaluate import summarize

MODELS = ["strong", "weak", "cheap"]
PRICES = {"strong": {"input": 10.0, "output": 30.0}, "weak": {"input": 1.0, "output": 1.0}, "cheap": {"input": 0.1, "output": 0.1}}


def synthetic_split(n: int, seed: int) -> tuple[RoutingTable, torch.Tensor]:
    """Two kinds of prompt, told apart by the sign of the first embedding coordinate: the weak
    model is right on the 'easy' kind only, the strong one always, the cheap one never."""
    rng = np.random.default_rng(seed)
    easy = rng.random(n) < 0.5
    embeddings = rng.normal(size=(n, 8))
    embeddings[:, 0] = np.where(easy, 3.0, -3.0) + rng.normal(scale=0.3, size=n)
    embeddings = torch.nn.functional.normalize(torch.tensor(embeddings, dtype=torch.float32), dim=1)
    scores = np.stack([np.ones(n), easy.astype(float), np.zeros(n)], axis=1)
    output_tokens = np.tile([200.0, 100.0, 50.0], (n, 1))
    table = RoutingTable(
        prompts=[f"prompt {i}" for i in range(n)],
        prompt_ids=[str(i) for i in range(n)],
        tasks=["t"] * n,
        models=list(MODELS),
        scores=scores,
        input_tokens=np.full((n, 3), 20.0),
        output_tokens=output_tokens,
        prices=PRICES,
    )
    return table, embeddings


@pytest.fixture(scope="module")
def splits():
    return synthetic_split(200, seed=0), synthetic_split(100, seed=1)


def test_knn_regress_by_hand():
    memory = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    targets = np.array([[1.0], [3.0], [10.0]])
    query = torch.tensor([[1.0, 0.05]])
    assert knn_regress(memory, targets, query, k=2)[0, 0] == pytest.approx(2.0)
    assert knn_regress(memory, targets, query, k=1)[0, 0] == pytest.approx(1.0)


def test_knn_cv_prefers_a_useful_k(splits):
    (table, embeddings), _ = splits
    k, scores = knn_cv_pick(embeddings, table.scores.astype(float), k_grid=(2, 8, 128))
    assert k in (2, 8)  # 128 neighbours of 160 mixes both kinds of prompt
    assert scores[128] < scores[k]


def test_reference_predictions_recover_the_structure(splits):
    (train, train_emb), (test, test_emb) = splits
    prediction = reference_knn_predictions(train_emb, ground_truth(train), test_emb, k_grid=(4, 16))
    easy = test.scores[:, 1] == 1
    assert prediction["quality"][easy, 1].mean() > 0.9 and prediction["quality"][~easy, 1].mean() < 0.1
    np.testing.assert_allclose(prediction["cost"], ground_truth(test).cost, rtol=1e-6)  # constant cost per model


def test_mf_learns_who_wins(splits):
    (train, train_emb), (test, test_emb) = splits
    model, info = train_mf(train_emb, ground_truth(train), epochs=40, batch_size=256, lr=1e-2)
    truth = ground_truth(test)
    curve = mf_curve(model, test_emb, truth, ("strong", "weak"))
    with torch.no_grad():
        s = model(test_emb)
    p_strong = torch.sigmoid(s[:, 0] - s[:, 1]).numpy()
    needs_strong = test.scores[:, 1] == 0
    assert metrics.auroc(needs_strong.astype(float), p_strong) > 0.95
    # The ideal router sends the hard fraction h first: PGR climbs to 1 over [0, h], APGR = 1 − h/2
    # (random routing: 0.5).
    apgr = metrics.apgr(curve.pair_fraction, curve.pair_qualities, 1.0, float(truth.scores[:, 1].mean()))
    assert apgr == pytest.approx(1 - needs_strong.mean() / 2, abs=0.03)
    assert curve.qualities[curve.top] == pytest.approx(1.0)  # all to the strong model


def test_random_mixing_and_oracle(splits):
    _, (test, _) = splits
    truth = ground_truth(test)
    curve = random_mixing_curve(truth, n_points=3, pair=("strong", "weak"))
    cost = truth.cost.mean(0)
    np.testing.assert_allclose(curve.costs, [cost[2], (cost[0] + cost[2]) / 2, cost[0]])
    oracle = oracle_curve(truth)
    assert oracle.qualities[0] == pytest.approx(1.0)
    easy = test.scores[:, 1] == 1
    assert oracle.costs[0] == pytest.approx(np.where(easy, truth.cost[:, 1], truth.cost[:, 0]).mean())


def test_all_baselines_in_one_summary(splits):
    (train, train_emb), (test, test_emb) = splits
    truth = ground_truth(test)
    curves = trained_baselines(train_emb, ground_truth(train), test_emb, truth, ("strong", "weak"), np.linspace(0, 1, 21), 0.005)
    results = summarize(curves, truth, ("strong", "weak"))
    assert set(results["baselines"]) == {"carrot-knn-reference", "routerbench", "routellm-mf"}
    reference = results["baselines"]["carrot-knn-reference"]
    assert reference["quality_mu0"] == pytest.approx(1.0)
    # Per-prompt skill lets it match the strong model for about half its cost.
    assert reference["cost_to_match_best"] < 0.7
    assert results["oracle"]["aiq"] >= max(entry["aiq"] for entry in results["baselines"].values()) - 1e-12
