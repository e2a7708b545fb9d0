"""Prompt embeddings of a routing table with the router's own encoder, optionally cached on disk.

The cache lets the benchmark encode each prompt once for every predictor kind: the file name is a
hash of the encoder's weights, of how prompts are cut (`max_prompt_tokens`, truncation side) and of
the prompts themselves, so a changed encoder or prompt list can never pick up stale embeddings.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


def encoder_fingerprint(router) -> str:
    """Hex digest of the encoder's weights (names, shapes and bytes) and of the prompt cutting rule."""
    digest = hashlib.blake2b(digest_size=16)
    for name, tensor in sorted(router.encoder.state_dict().items()):
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    config = router.config
    digest.update(f"max_prompt_tokens={config.max_prompt_tokens}".encode())
    digest.update(f"truncation_side={getattr(config, 'truncation_side', 'right')}".encode())
    return digest.hexdigest()


def prompts_fingerprint(prompts) -> str:
    """Hex digest of the ordered prompt texts."""
    digest = hashlib.blake2b(digest_size=16)
    for prompt in prompts:
        encoded = prompt.encode("utf-8")
        digest.update(len(encoded).to_bytes(8, "little"))
        digest.update(encoded)
    return digest.hexdigest()


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
    cache_file = None
    if cache_dir is not None:
        key = hashlib.blake2b(
            (encoder_fingerprint(router) + prompts_fingerprint(prompts)).encode(), digest_size=16
        ).hexdigest()
        cache_file = Path(cache_dir) / f"embeddings-{key}.safetensors"
        if cache_file.exists():
            cached = load_file(cache_file)["embeddings"]
            if cached.shape[0] == len(prompts):
                return cached
    was_training = router.training
    router.eval()
    try:
        # clone(): encode() runs in inference mode; training needs an ordinary tensor.
        embeddings = router.encode(prompts, batch_size=batch_size, progress=progress).embeddings.clone()
    finally:
        router.train(was_training)
    if cache_file is not None:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        handle, staging = tempfile.mkstemp(prefix=".embeddings-", suffix=".tmp", dir=cache_file.parent)
        os.close(handle)
        try:
            save_file({"embeddings": embeddings.contiguous()}, staging, metadata={"n_prompts": str(len(prompts))})
            os.replace(staging, cache_file)
        finally:
            if os.path.exists(staging):
                os.remove(staging)
    return embeddings
