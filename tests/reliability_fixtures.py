"""Synthetic prompt embeddings in two clusters (two "tasks") and the routers fitted on them, for the
support and reliability tests (synthetic data: these are unit tests of the statistics)."""

import numpy as np
import torch

from carrot_hub.building import fit_knn, new_router
from carrot_hub.modeling_carrot import PromptEncoding
from carrot_hub.reliability import RELIABILITY_LAYERS, fit_knn_reliability

from .conftest import TINY_MODELS, TINY_PRICES


def clustered_embeddings(n_per_cluster: int = 40, hidden: int = 384, seed: int = 0) -> torch.Tensor:
    """Unit vectors around two directions: a synthetic 'training distribution' with two tasks."""
    generator = torch.Generator().manual_seed(seed)
    centres = torch.nn.functional.normalize(torch.randn(2, hidden, generator=generator), dim=1)
    points = centres.repeat_interleave(n_per_cluster, 0) + 0.15 * torch.randn(2 * n_per_cluster, hidden, generator=generator)
    return torch.nn.functional.normalize(points, dim=1), centres


def synthetic_table(n: int, seed: int = 0):
    from carrot_hub.data import RoutingTable

    rng = np.random.default_rng(seed)
    scores = rng.integers(0, 2, size=(n, 3)).astype(np.float64)
    scores[:, 0] = 1.0
    return RoutingTable(
        prompts=[f"prompt {i}" for i in range(n)],
        prompt_ids=[str(i) for i in range(n)],
        tasks=["a"] * (n // 2) + ["b"] * (n - n // 2),
        models=list(TINY_MODELS),
        scores=scores,
        input_tokens=np.full((n, 3), 30.0),
        output_tokens=np.tile([300.0, 120.0, 40.0], (n, 1)),
        prices={m: dict(p) for m, p in TINY_PRICES.items()},
        split="train",
    )


def encoding(embeddings: torch.Tensor) -> PromptEncoding:
    return PromptEncoding(embeddings, torch.full((embeddings.shape[0],), 30.0), [False] * embeddings.shape[0])


def clustered_knn_router():
    """A kNN router (k = 8) over two synthetic clusters, its reliability fitted as training does, with
    every layer in use (not only the default ones), so that each rule's choice can be checked:
    `(router, fit report, embeddings, table, cluster centres)`."""
    embeddings, centres = clustered_embeddings(n_per_cluster=60)
    table = synthetic_table(embeddings.shape[0])
    router = new_router(TINY_MODELS, TINY_PRICES, predictor_kind="knn", knn_k=8, cost_scale=1e-3)
    fit_knn(router, embeddings, table)
    report = fit_knn_reliability(router, table, embeddings, layers=RELIABILITY_LAYERS)
    return router, report, embeddings, table, centres
