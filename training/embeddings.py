"""Prompt embeddings of a routing table with the router's own encoder, optionally cached on disk.

The cache lets the benchmark encode each prompt once for every predictor kind. Files are keyed
(carrot_hub.embedding_cache) by a hash of the encoder's weights, of how prompts are cut
(`max_prompt_tokens`, truncation side) and of the prompts themselves, so a changed encoder or prompt
list can never pick up stale embeddings.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from carrot_hub.embedding_cache import embeddings_key, encode_with_cache


def embed_table(router, table, cache_dir=None, batch_size: int = 32, progress: bool = True) -> torch.Tensor:
    """
    Embed every prompt of `table` with `router`'s encoder (`router.encode(prompts).embeddings`).

    Args:
        router: a `CarrotRouter` (its encoder, tokenizer and prompt-cutting rule are used).
        table: a `RoutingTable`.
        cache_dir: a folder for cached embeddings (`embeddings-<hash>.safetensors`); None disables it.
        batch_size: prompts per encoder forward pass.
        progress: show a progress bar.

    Returns:
        `torch.FloatTensor` of shape `(n_prompts, hidden)`: L2-normalised embeddings in table order.
    """
    prompts = list(table.prompts)
    if not prompts:
        raise ValueError("The routing table has no prompts to embed.")
    cache_file = None if cache_dir is None else embedding_cache_file(cache_dir, router, prompts)
    return encode_with_cache(router, prompts, cache_file, batch_size=batch_size, progress=progress)


def embedding_cache_file(cache_dir, router, prompts) -> Path:
    """The file in `cache_dir` holding `router`'s embeddings of `prompts` (`embeddings-<hash>.safetensors`)."""
    name = hashlib.blake2b(embeddings_key(router, list(prompts)).encode(), digest_size=16).hexdigest()
    return Path(cache_dir) / f"embeddings-{name}.safetensors"
