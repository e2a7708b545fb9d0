"""The shared neighbour search of the reliability fit and the cross-validation's one search for every k
find exactly what a search per group, per k and per side finds; the packaged tables' settings are kept."""

import json

import numpy as np
import pytest
import torch

from carrot_hub.configuration_carrot import CarrotConfig
from carrot_hub.modeling_carrot import CarrotKNNMemory, top_k_mean_similarity
from carrot_hub.reliability import NeighbourLists, _mask, leave_one_out_support, support_of
from training.knn import neighbour_means_by_k


def clustered(n=1500, hidden=24, clusters=5, seed=0):
    generator = torch.Generator().manual_seed(seed)
    centres = torch.nn.functional.normalize(torch.randn(clusters, hidden, generator=generator), dim=1)
    labels = torch.randint(0, clusters, (n,), generator=generator)
    points = centres[labels] + 0.3 * torch.randn(n, hidden, generator=generator)
    return torch.nn.functional.normalize(points, dim=1), labels.numpy()


def test_shared_lists_match_a_search_of_each_memory():
    embeddings, labels = clustered()
    n = embeddings.shape[0]
    lists = NeighbourLists(embeddings, depth=4 * 32)
    group = np.flatnonzero(labels == 1)  # its own rows' lists are mostly the group: searched directly
    others = np.random.default_rng(0).permutation(np.setdiff1d(np.arange(n), group))
    held_in, memory = others[:300], others[300:]
    excluded = _mask(n, group, held_in)
    k_grid = [1, 2, 8, 32]
    means = {name: lists.top_k_means(rows, excluded, k_grid) for name, rows in (("memory", memory), ("in", held_in), ("out", group))}
    for column, k in enumerate(k_grid):
        expected = {
            "memory": top_k_mean_similarity(embeddings[memory], embeddings[memory], k, exclude_self=True),
            "in": top_k_mean_similarity(embeddings[held_in], embeddings[memory], k),
            "out": top_k_mean_similarity(embeddings[group], embeddings[memory], k),
        }
        for name in expected:
            torch.testing.assert_close(means[name][:, column], expected[name], atol=1e-6, rtol=0)
    rest = np.setdiff1d(np.arange(n), group)
    torch.testing.assert_close(lists.support(group, _mask(n, group), 8), support_of(embeddings[group], embeddings[rest], 8))
    np.testing.assert_allclose(leave_one_out_support(embeddings, 4, lists), leave_one_out_support(embeddings, 4), atol=2 / n)


def test_k_larger_than_the_memory_is_cut_as_a_search_cuts_it():
    embeddings, _ = clustered(n=60)
    lists = NeighbourLists(embeddings, depth=8)
    excluded = _mask(60, np.arange(40))
    means = lists.top_k_means(np.arange(40, 60), excluded, [64])
    torch.testing.assert_close(means[:, 0], top_k_mean_similarity(embeddings[40:], embeddings[40:], 64, exclude_self=True))


def test_every_k_from_one_search_matches_the_memory_at_each_k():
    embeddings, _ = clustered(n=1200)
    generator = torch.Generator().manual_seed(1)
    quality = torch.randint(0, 2, (1200, 3), generator=generator).float()
    quality[torch.rand(1200, 3, generator=generator) < 0.15] = float("nan")  # missing scores take deeper rows
    tokens = torch.rand(1200, 3, generator=generator) * 300
    tokens[torch.rand(1200, 3, generator=generator) < 0.05] = float("nan")
    memory = CarrotKNNMemory(CarrotConfig(candidate_models=["a", "b", "c"], knn_k=8, knn_memory_size=0), 24)
    memory.fill(embeddings[:900], quality[:900], tokens[:900])
    k_grid = [1, 4, 32, 256, 5000]
    by_k_quality, by_k_tokens = neighbour_means_by_k(memory, embeddings[900:], k_grid, chunk_size=128)
    for column, k in enumerate(k_grid):
        expected_quality, expected_tokens = memory(embeddings[900:], k=k)
        torch.testing.assert_close(by_k_quality[column], expected_quality, atol=1e-5, rtol=0)
        torch.testing.assert_close(by_k_tokens[column], expected_tokens, atol=1e-5, rtol=0)


def test_a_large_memory_reads_its_support_reference_off_a_sample():
    from carrot_hub.building import fit_knn, new_router

    from .conftest import TINY_MODELS, TINY_PRICES
    from .reliability_fixtures import clustered_embeddings, synthetic_table

    embeddings, centres = clustered_embeddings(n_per_cluster=300)
    n = embeddings.shape[0]
    router = new_router(TINY_MODELS, TINY_PRICES, predictor_kind="knn", knn_k=8, cost_scale=1e-3)
    fit_knn(router, embeddings, synthetic_table(n))
    noise = 0.15 * torch.randn(100, embeddings.shape[1], generator=torch.Generator().manual_seed(3))
    fresh = torch.nn.functional.normalize(centres.repeat_interleave(50, 0) + noise, dim=1)  # new prompts of the same tasks
    full = router.fit_support(k=4)
    whole = router.reliability.support(fresh, embeddings, 4)
    sampled = router.fit_support(k=4, max_probes=n // 3)
    probes = torch.randperm(n, generator=torch.Generator().manual_seed(0))[: n // 3].sort().values
    # each sampled row's leave-one-out similarity is the one an all-by-all search finds
    torch.testing.assert_close(sampled, full[probes], atol=1e-6, rtol=0)
    assert router.config.support_reference_size == n // 3
    # support read off the sample is the full reference's within a few standard errors (√(s(1 − s)/m) ≤ 0.05)
    assert 0.2 < float(whole.mean()) < 0.8
    assert float((router.reliability.support(fresh, embeddings, 4) - whole).abs().max()) < 0.1


# Chosen (every layer in use) by the fit before the shared search (main at a719848, `fit_knn_reliability` of each packaged
# table's default router on its shipped embeddings); the shared search must choose the same.
PACKAGED_CHOICES = {
    "zeroeval-2024": {"support_k": 4, "support_threshold": 0.01, "calibration_method": "identity", "prior_shrink": 0.05,
                      "shrink_floor": 0.0, "ood_pessimism": 1.0, "ood_pessimism_support": 0.1},
    "routerbench-0shot": {"support_k": 1, "support_threshold": 0.1, "calibration_method": "identity", "prior_shrink": 0.1,
                          "shrink_floor": 0.0, "ood_pessimism": 1.0, "ood_pessimism_support": 0.05},
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(PACKAGED_CHOICES))
def test_packaged_tables_keep_their_chosen_settings(name):
    from carrot_hub.building import fit_knn
    from carrot_hub.data.packaged import packaged_table_dir
    from carrot_hub.default import new_default_router
    from carrot_hub.embedding_cache import embeddings_key, load_embeddings
    from carrot_hub.reliability import RELIABILITY_LAYERS, fit_knn_reliability

    router, table = new_default_router("transformer", name)
    embeddings = load_embeddings(packaged_table_dir(name) / "train_embeddings.safetensors", embeddings_key(router, table.prompts))
    fit_knn(router, embeddings, table)
    fit_knn_reliability(router, table, embeddings, layers=RELIABILITY_LAYERS)  # every layer as fitted
    chosen = {key: getattr(router.config, key) for key in PACKAGED_CHOICES[name]}
    assert chosen == PACKAGED_CHOICES[name], json.dumps(chosen)


def _small_fit(monkeypatch=None, layers=None, **caps):
    from carrot_hub import reliability
    from carrot_hub.building import fit_knn, new_router

    from .conftest import TINY_MODELS, TINY_PRICES
    from .reliability_fixtures import clustered_embeddings, synthetic_table

    if monkeypatch is not None:
        for name, value in caps.items():
            monkeypatch.setattr(reliability, name, value)
    embeddings, _ = clustered_embeddings(n_per_cluster=60)
    table = synthetic_table(embeddings.shape[0])
    router = new_router(TINY_MODELS, TINY_PRICES, predictor_kind="knn", knn_k=8, cost_scale=1e-3)
    fit_knn(router, embeddings, table)
    return router, reliability.fit_knn_reliability(router, table, embeddings, layers=layers)


def test_large_tables_read_their_evidence_off_samples(monkeypatch):
    router, report = _small_fit(monkeypatch, MAX_EVIDENCE_ROWS=50, MAX_GROUP_ROWS=30)
    assert report["evidence_sample"].startswith("50 of 120 prompts")
    assert 0 < router.config.support_threshold <= 0.1 and 0 <= router.config.shrink_floor <= 1


def test_tasks_past_the_cap_are_sampled(monkeypatch):
    from carrot_hub import reliability

    from .reliability_fixtures import synthetic_table

    monkeypatch.setattr(reliability, "MAX_HELD_OUT_GROUPS", 3)
    table = synthetic_table(200)
    table.tasks = [f"t{i % 8}" for i in range(200)]
    groups, grouping = reliability.held_out_groups(table, torch.zeros(200, 4))
    assert len(groups) == 3 and grouping.startswith("tasks: 3 of 8")


def test_layers_left_out_are_fitted_then_set_to_no_change():
    router, report = _small_fit(layers=["prior_shrink"])
    assert router.config.calibration_method == "identity" and router.config.shrink_floor == 1.0
    assert router.config.ood_pessimism == 0.0 and router.config.prior_shrink == report["layers"]["fitted"]["prior_shrink"]
    with pytest.raises(ValueError, match="Unknown reliability layers"):
        _small_fit(layers=["calibration", "band"])
