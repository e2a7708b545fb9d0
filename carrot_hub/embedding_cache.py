"""Prompt embeddings saved as safetensors, keyed by what produced them.

A cached file is only used when its key matches: a hash of the encoder's weights, of how prompts
are cut (max_prompt_tokens, truncation side) and of the ordered prompt texts. A changed encoder,
cutting rule or prompt list therefore re-encodes instead of silently reusing stale embeddings.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .atomic_writing import atomic_path


def encoder_fingerprint(router) -> str:
    """Hex digest of the encoder's weights (names, shapes and bytes) and of the prompt cutting rule."""
    digest = hashlib.blake2b(digest_size=16)
    for name, tensor in sorted(router.encoder.state_dict().items()):
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    config = router.config
    digest.update(f"max_prompt_tokens={config.max_prompt_tokens}".encode())
    digest.update(f"truncation_side={config.truncation_side}".encode())
    return digest.hexdigest()


def prompts_fingerprint(prompts: Sequence[str]) -> str:
    """Hex digest of the ordered prompt texts."""
    digest = hashlib.blake2b(digest_size=16)
    for prompt in prompts:
        encoded = prompt.encode("utf-8")
        digest.update(len(encoded).to_bytes(8, "little"))
        digest.update(encoded)
    return digest.hexdigest()


def embeddings_key(router, prompts: Sequence[str]) -> str:
    """The key a cached embeddings file must carry to be used for `prompts` with `router`'s encoder."""
    return f"{encoder_fingerprint(router)}-{prompts_fingerprint(prompts)}"


def load_embeddings(path: str | os.PathLike, key: str) -> torch.Tensor | None:
    """`(n, hidden)` embeddings from `path` if it exists and carries `key`, else None."""
    path = Path(path)
    if not path.is_file():
        return None
    with safe_open(str(path), framework="pt") as handle:
        if (handle.metadata() or {}).get("key") != key:
            return None
        return handle.get_tensor("embeddings")


def save_embeddings(path: str | os.PathLike, embeddings: torch.Tensor, key: str) -> None:
    """Write `(n, hidden)` embeddings with their key, atomically (temporary file, then rename)."""
    with atomic_path(path) as staging:
        save_file({"embeddings": embeddings.float().contiguous()}, str(staging), metadata={"key": key})


def encode_with_cache(
    router, prompts: Sequence[str], path: str | os.PathLike | None, batch_size: int = 32, progress: bool = True
) -> torch.Tensor:
    """`router.encode(prompts).embeddings` `(n, hidden)`, read from / written to `path` when given."""
    prompts = list(prompts)
    key = embeddings_key(router, prompts) if path is not None else None
    if path is not None:
        cached = load_embeddings(path, key)
        if cached is not None and cached.shape[0] == len(prompts):
            return cached
    was_training = router.training
    router.eval()
    try:
        embeddings = router.encode(prompts, batch_size=batch_size, progress=progress).embeddings
    finally:
        router.train(was_training)
    if path is not None:
        save_embeddings(path, embeddings, key)
    return embeddings
