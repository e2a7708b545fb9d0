"""The static-table candidates (training.static_tokens) and the leave-one-task-out comparison's bookkeeping
(training.static_unseen); the comparison itself runs as a benchmark, not a test."""

import array

import numpy as np

import pytest
import torch

from carrot_hub.encoder_carrot import CarrotStaticEncoder
from training.static_tokens import embed_with_rows, learn_token_table, pca_rows
from training.static_unseen import _is_learned, main, parse_learned, summarize


def _ids(rows):
    return [array.array("i", ids) for ids in rows]


def test_embed_with_rows_matches_the_static_encoder_including_an_empty_prompt():
    torch.manual_seed(0)
    table = torch.randn(20, 6)
    encoder = CarrotStaticEncoder(20, 6)
    encoder.token_embeddings.weight.data.copy_(table)
    encoder.fallback.copy_(torch.nn.functional.normalize(table.mean(0), dim=0))
    prompts = [[1, 2, 3], [], [4, 4, 19]]
    flat = torch.tensor([i for ids in prompts for i in ids])
    offsets = torch.tensor([0, 3, 3])
    expected = encoder.embed_bags(flat, offsets)
    assert torch.allclose(embed_with_rows(table, _ids(prompts)), expected, atol=1e-6)


def test_pca_rows_keeps_the_widest_directions():
    torch.manual_seed(0)
    rows = torch.randn(500, 2) @ torch.tensor([[5.0, 0.0], [0.0, 0.1]])
    rows = torch.cat([rows, torch.zeros(500, 3)], dim=1)
    reduced = pca_rows(rows, 1)
    assert reduced.shape == (500, 1)
    assert reduced.var() > 20 * (rows[:, 1].var())


@pytest.mark.parametrize("objective", ["cosine", "tokenlearn"])
def test_learning_a_token_table_moves_prompt_means_toward_the_targets(objective):
    torch.manual_seed(0)
    vocab, width = 50, 8
    truth = torch.randn(vocab, width)
    start = truth + 2.0 * torch.randn(vocab, width)
    generator = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, vocab, (int(torch.randint(3, 12, (1,), generator=generator)),), generator=generator).tolist()
               for _ in range(600)] + [[]]
    targets = torch.nn.functional.normalize(torch.stack([truth[ids].mean(0) if ids else torch.ones(width) for ids in prompts]), dim=-1)
    learned, report = learn_token_table(start, _ids(prompts), targets, objective=objective, batch_size=64, lr=0.02, max_epochs=15)
    assert learned.shape == start.shape
    assert report["corpus_prompts"] == 600  # the prompt with no token is skipped
    assert report["best_validation_loss"] < report["validation_loss"][0]

    def cosine_to_targets(rows):
        embedded = embed_with_rows(rows, _ids(prompts[:-1]))
        return torch.nn.functional.cosine_similarity(embedded, targets[:-1]).mean()

    if objective == "cosine":  # tokenlearn's objective fits a linear map of the mean, not the mean itself
        assert cosine_to_targets(learned) > cosine_to_targets(start) + 0.1


def test_cosine_objective_needs_targets_as_wide_as_the_table():
    with pytest.raises(ValueError, match="as wide as the table"):
        learn_token_table(torch.randn(10, 4), _ids([[1, 2]] * 20), torch.randn(20, 5))


def test_encoder_names_and_summary():
    assert parse_learned("learned-cosine-128") == ("cosine", 128)
    assert parse_learned("learned-tokenlearn-none") == ("tokenlearn", None)
    assert _is_learned("learned-cosine-256") and not _is_learned("learned-cosine-999") and not _is_learned("learned-mse-none")
    rows = [
        {"encoder": "minilm", "table": "t", "task": "a", "aiq_minus_zero_router": 0.01},
        {"encoder": "minilm", "table": "t", "task": "b", "aiq_minus_zero_router": -0.02},
        {"encoder": "static", "table": "t", "task": "a", "aiq_minus_zero_router": 0.0},
        {"encoder": "static", "table": "t", "task": "b", "aiq_minus_zero_router": -0.01},
    ]
    summary = summarize(rows)
    assert summary["minilm"]["mean"] == pytest.approx(-0.005)
    assert summary["static"]["minus_minilm"] == {"t/a": pytest.approx(-0.01), "t/b": pytest.approx(0.01)}
    assert summary["static"]["minus_minilm_mean"] == pytest.approx(0.0)
    assert summary["static"]["minus_minilm_worst"] == pytest.approx(-0.01)


def test_unknown_encoder_is_refused_with_exit_2(capsys):
    assert main(["--encoders", "distill-128", "bogus"]) == 2
    assert "unknown encoder or table bogus" in capsys.readouterr().err


def test_paired_difference_of_a_router_with_itself_is_zero_and_a_better_one_is_ahead():
    from training.static_unseen import paired_difference

    rng = np.random.default_rng(0)
    scores = rng.random((200, 3))
    cost = np.tile([1.0, 2.0, 4.0], (200, 1))
    singles = np.repeat(np.arange(3)[:, None], 200, axis=1)  # each point one model for every prompt: the zero router
    oracle = np.stack([np.zeros(200, dtype=int), scores[:, :2].argmax(1), scores.argmax(1)])  # the best within each budget
    same = paired_difference(scores, cost, singles, singles, resamples=50)
    assert same["difference"] == 0 and same["standard_error"] == 0
    better = paired_difference(scores, cost, oracle, singles, resamples=50)
    assert better["difference"] > 0 and better["ci95"][0] > 0
