"""Counting tokens with one fixed tokenizer, so token counts from different sources are comparable."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from tqdm.auto import tqdm


def load_counting_tokenizer(name_or_path: str | None = None):
    """The tokenizer used to count tokens: by default all-MiniLM-L6-v2's (WordPiece, uncased), offline."""
    from transformers import AutoTokenizer

    if name_or_path is None:
        from ..default_encoder import default_encoder_path

        name_or_path = default_encoder_path()
    tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    tokenizer.model_max_length = 10**9  # we count, never feed a model: no length warnings, no truncation
    return tokenizer


def count_tokens(texts: Sequence[str], tokenizer, batch_size: int = 512, progress: bool = False, desc: str = "tokens") -> np.ndarray:
    """`(len(texts),)` int64: tokens per text, without special tokens ([CLS]/[SEP] are not counted)."""
    counts = np.zeros(len(texts), dtype=np.int64)
    for start in tqdm(range(0, len(texts), batch_size), desc=desc, disable=not progress):
        chunk = list(texts[start : start + batch_size])
        ids = tokenizer(chunk, add_special_tokens=False, truncation=False, return_attention_mask=False)["input_ids"]
        counts[start : start + len(chunk)] = [len(row) for row in ids]
    return counts
