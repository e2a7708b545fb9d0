"""The embedded default router: built offline from the packaged data, and a real router."""

import pytest
import torch

from carrot_hub import CarrotRouter
from carrot_hub.default import DEFAULT_EMBEDDINGS, build_default_router, default_router, new_default_router
from carrot_hub.embedding_cache import embeddings_key, load_embeddings

PROMPTS = [
    "Write a python function to check whether a number is prime.",
    "Which gas do plants absorb from the air? A) oxygen B) carbon dioxide C) nitrogen D) helium",
    "The trophy does not fit in the suitcase because _ is too big. A) trophy B) suitcase",
]


@pytest.fixture(scope="module")
def default_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cache") / "default-router"
    build_default_router(folder, progress=False)
    return folder


def test_shipped_embeddings_match_the_encoder_and_data():
    router, table = new_default_router()
    shipped = load_embeddings(DEFAULT_EMBEDDINGS, embeddings_key(router, table.prompts))
    assert shipped is not None, "train_embeddings.safetensors is stale: run scripts/build_default_embeddings.py"
    assert shipped.shape == (2225, 384)
    sample = [0, 500, 1500, 2224]
    fresh = router.encode([table.prompts[i] for i in sample]).embeddings
    torch.testing.assert_close(fresh, shipped[sample], atol=1e-5, rtol=1e-4)


def test_default_router_is_built_once_then_loaded(default_folder):
    router = default_router(cache_dir=default_folder)
    assert isinstance(router, CarrotRouter)
    assert router.config.predictor_kind == "knn" and router.config.knn_memory_size == 2225
    assert len(router.config.candidate_models) == 11
    stamp = (default_folder / "model.safetensors").stat().st_mtime_ns
    default_router(cache_dir=default_folder)
    assert (default_folder / "model.safetensors").stat().st_mtime_ns == stamp


def test_default_router_routes_by_mu(default_folder):
    router = default_router(cache_dir=default_folder)
    best = router.route(PROMPTS, mu=0.0)
    cheapest = router.route(PROMPTS, mu=1.0)
    assert best.model_indices.tolist() == best.quality.argmax(1).tolist()
    assert cheapest.model_indices.tolist() == cheapest.cost.argmin(1).tolist()
    assert best.chosen_cost.sum() > cheapest.chosen_cost.sum()
    assert best.chosen_quality.mean() > cheapest.chosen_quality.mean()
