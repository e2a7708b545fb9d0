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


_RACER = """
import json, sys, time
from pathlib import Path
import carrot_hub.default as default

barrier, count, folder = Path(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
fit = default.fit_knn

def fit_then_wait(*args, **kwargs):  # every process publishes at the same moment
    fit(*args, **kwargs)
    (barrier / str(__import__("os").getpid())).touch()
    deadline = time.time() + 300
    while len(list(barrier.iterdir())) < count and time.time() < deadline:
        time.sleep(0.05)

default.fit_knn = fit_then_wait
router = default.default_router(cache_dir=folder, progress=False, dtype="float32")
print(json.dumps(router.route(["Write a python function to check whether a number is prime."], mu=0.0).models))
"""


@pytest.mark.slow  # four processes load the encoder and data: about 2 minutes on two shared cores
def test_processes_building_the_cache_at_once_all_succeed(tmp_path):
    """Four processes build the default router into one empty cache at once (issue 15.13): one
    publishes its folder with an atomic move, the others use it; none crashes, nothing is left over."""
    import json
    import subprocess
    import sys

    barrier, folder, count = tmp_path / "barrier", tmp_path / "cache" / "default-router", 4
    barrier.mkdir()
    racers = [
        subprocess.Popen([sys.executable, "-c", _RACER, str(barrier), str(count), str(folder)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(count)
    ]
    outputs = [racer.communicate(timeout=600) for racer in racers]
    for racer, (out, err) in zip(racers, outputs):
        assert racer.returncode == 0, err[-2000:]
    assert len({out.strip().splitlines()[-1] for out, _ in outputs}) == 1  # all route with the same router
    assert CarrotRouter.from_pretrained(folder).config.knn_memory_size == 2225
    assert [p.name for p in folder.parent.iterdir()] == ["default-router"]


@pytest.fixture(scope="module")
def static_default_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cache") / "default-static-router"
    build_default_router(folder, progress=False, encoder="static")
    return folder


def test_static_default_router_is_built_from_the_shipped_data_and_routes(static_default_folder):
    from carrot_hub.default import DEFAULT_STATIC_KNN_K

    router = default_router(cache_dir=static_default_folder, encoder="static")
    assert router.config.encoder_kind == "static" and router.config.knn_k == DEFAULT_STATIC_KNN_K
    assert router.config.knn_memory_size == 2225 and router.embedding_size == 128
    assert router.encoder.token_embeddings.weight.dtype == torch.float32  # "auto" keeps a table in float32
    best, cheapest = router.route(PROMPTS, mu=0.0), router.route(PROMPTS, mu=1.0)
    assert best.model_indices.tolist() == best.quality.argmax(1).tolist()
    assert cheapest.model_indices.tolist() == cheapest.cost.argmin(1).tolist()
    assert best.chosen_cost.sum() > cheapest.chosen_cost.sum()


def test_default_router_never_reuses_a_cache_folder_of_the_other_encoder(static_default_folder):
    before = (static_default_folder / "model.safetensors").read_bytes()
    with pytest.raises(ValueError, match="holds a default router with a static encoder"):
        default_router(cache_dir=static_default_folder, encoder="transformer")
    with pytest.raises(ValueError, match="encoder must be one of transformer, static"):
        default_router(cache_dir=static_default_folder, encoder="word2vec")
    assert (static_default_folder / "model.safetensors").read_bytes() == before
