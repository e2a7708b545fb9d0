"""training.knn and training.heads on a small synthetic table with the real encoder."""

import numpy as np
import pytest
import torch
from transformers import AutoModel

from carrot_hub.configuration_carrot import CarrotConfig
from carrot_hub.modeling_carrot import CarrotMLPHeads
from tests.conftest import make_tiny_table
from training.embeddings import embed_table
from training.heads import merge_heads, split_train_validation, train_heads_router
from training.knn import fold_indices, train_knn_router
from training.output import save_router_atomically


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="session")
def table24():
    return make_tiny_table(n_repeats=4)


@pytest.fixture(scope="session")
def embeddings24(knn_router_session, table24, tmp_path_factory):
    cache = tmp_path_factory.mktemp("embcache")
    first = embed_table(knn_router_session, table24, cache_dir=cache, progress=False)
    assert len(list(cache.glob("embeddings-*.safetensors"))) == 1
    again = embed_table(knn_router_session, table24, cache_dir=cache, progress=False)
    assert torch.equal(first, again)
    return first


def test_embed_table_matches_encode_and_cache_key_depends_on_prompts(knn_router, table24, embeddings24, tmp_path):
    direct = knn_router.encode(table24.prompts[:5]).embeddings
    assert torch.allclose(embeddings24[:5], direct, atol=1e-5)
    embed_table(knn_router, table24.subset(range(6)), cache_dir=tmp_path, progress=False)
    embed_table(knn_router, table24.subset(range(7)), cache_dir=tmp_path, progress=False)
    assert len(list(tmp_path.glob("embeddings-*.safetensors"))) == 2


def test_folds_cover_every_row_once():
    parts = fold_indices(23, 5, seed=3)
    assert sorted(np.concatenate(parts).tolist()) == list(range(23))
    with pytest.raises(ValueError, match="at least 2"):
        fold_indices(10, 1, 0)


def test_knn_router_cv_picks_best_k_and_saves(table24, embeddings24, tmp_path):
    router, report = train_knn_router(table24, k_grid=(1, 2, 4, 64), folds=4, embeddings=embeddings24, progress=False)
    assert report["k_grid"] == [1, 2, 4, 64] and len(report["brier"]) == len(report["aiq"]) == 4
    # k is picked by how well the out-of-fold predictions route, not by a proxy.
    best = max(report["aiq"])
    assert report["aiq"][report["k_grid"].index(report["k"])] == best
    # The 64-nearest "neighbours" are the whole memory: every prompt gets the same prediction,
    # so routing cannot beat picking per prompt.
    assert report["aiq"][report["k_grid"].index(64)] < best
    assert router.config.knn_k == report["k"] and router.config.knn_memory_size == 24
    # The small model is right on exactly the same prompts in every repeat: near neighbours beat the mean.
    assert report["brier"][report["k_grid"].index(64)] > min(report["brier"])
    assert report["cost_scale"] == pytest.approx(float(np.nanmax(np.nanmean(table24.cost(), 0))))
    folder = save_router_atomically(router, tmp_path / "knn")
    loaded = AutoModel.from_pretrained(folder)
    decision = loaded.route([table24.prompts[2]], mu=0.0)
    assert decision.quality.shape == (1, 3)


def test_knn_cv_skips_missing_cells(table24, embeddings24, knn_router):
    table = make_tiny_table(n_repeats=4)
    table.scores[::2, 1] = np.nan
    router, report = train_knn_router(table, k_grid=(2, 8), folds=3, embeddings=embeddings24, progress=False)
    assert np.isfinite(report["brier"]).all()
    quality = router.predict_encoded(knn_router.encode(table.prompts[:4])).quality
    assert torch.isfinite(quality).all() and ((quality >= 0) & (quality <= 1)).all()


def test_heads_router_learns_and_restores_best(table24, embeddings24, tmp_path):
    router, report = train_heads_router(
        table24, embeddings=embeddings24, validation_fraction=0.25, max_epochs=60, patience=10, lr=3e-3,
        hidden=32, progress=False,
    )
    member = report["members"][0]
    assert report["n_validation_prompts"] == 6 and report["n_train_prompts"] == 18
    assert 1 <= member["best_epoch"] <= member["epochs_run"] <= 60
    # Always-right big model: its predicted quality must beat the small model's on average.
    quality, tokens = router.predict_from_embeddings(embeddings24)
    assert quality[:, 0].mean() > quality[:, 2].mean()
    assert tokens[:, 0].mean() > tokens[:, 2].mean()  # 300 vs 40 output tokens
    folder = save_router_atomically(router, tmp_path / "mlp")
    loaded = AutoModel.from_pretrained(folder)
    assert loaded.config.predictor_kind == "mlp"
    assert torch.allclose(loaded.predict_from_embeddings(embeddings24)[0], quality, atol=1e-5)


def test_heads_ensemble_is_the_mean_of_its_members(table24, embeddings24):
    router, report = train_heads_router(
        table24, embeddings=embeddings24, max_epochs=5, patience=5, hidden=8, ensemble=3, progress=False,
        validation_fraction=0.25,
    )
    assert router.config.head_hidden_size == 24 and len(report["members"]) == 3
    config = CarrotConfig(candidate_models=["a", "b"], head_hidden_size=4)
    members = []
    for seed in range(3):
        torch.manual_seed(seed)
        members.append(CarrotMLPHeads(config, 6).eval())
    merged = merge_heads(members, CarrotConfig(candidate_models=["a", "b"], head_hidden_size=12), 6).eval()
    x = torch.randn(5, 6)
    expected = [torch.stack([m(x)[i] for m in members]).mean(0) for i in range(2)]
    got = merged(x)
    assert torch.allclose(got[0], expected[0], atol=1e-6) and torch.allclose(got[1], expected[1], atol=1e-6)


def test_validation_split_is_seeded():
    a = split_train_validation(50, 0.2, seed=1)
    b = split_train_validation(50, 0.2, seed=1)
    assert all(np.array_equal(x, y) for x, y in zip(a, b)) and len(a[1]) == 10
    with pytest.raises(ValueError, match="validation_fraction"):
        split_train_validation(50, 1.5, seed=1)


# ------------------------------------------------------------------------------------- bad input


def test_one_model_is_refused(table24, embeddings24):
    one = table24.select_models(["big-model"])
    with pytest.raises(ValueError, match="at least two candidate"):
        train_knn_router(one, embeddings=embeddings24, progress=False)
    with pytest.raises(ValueError, match="at least two candidate"):
        train_heads_router(one, embeddings=embeddings24, progress=False)


def test_all_missing_scores_name_the_model_or_are_dropped_on_request(embeddings24):
    table = make_tiny_table(n_repeats=4)
    table.scores[:, 1] = np.nan
    with pytest.raises(ValueError, match="'mid-model'.*drop_unscored_models"):
        train_knn_router(table, embeddings=embeddings24, progress=False)
    router, report = train_knn_router(
        table, k_grid=(2,), folds=2, embeddings=embeddings24, drop_unscored_models=True, progress=False
    )
    assert router.config.candidate_models == ["big-model", "small-model"]
    assert report["candidate_models"] == ["big-model", "small-model"]


def test_missing_prices_and_wrong_embeddings_are_refused(table24, embeddings24):
    table = make_tiny_table(n_repeats=4)
    table.prices = None
    with pytest.raises(ValueError, match="no price table"):
        train_knn_router(table, embeddings=embeddings24, progress=False)
    with pytest.raises(ValueError, match="embeddings has 5 rows"):
        train_knn_router(table24, embeddings=embeddings24[:5], progress=False)
