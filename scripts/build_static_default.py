"""Distil the static encoder that ships inside the package (all-MiniLM-L6-v2, 128 dimensions).

    python scripts/build_static_default.py

Writes carrot_hub/default_data/static-all-MiniLM-L6-v2 (the token table in float16 and its
tokenizer), keyed by the encoder's weights and vocabulary and the distillation options:
`carrot_hub.distillation.distill_static_encoder()` uses it only when the key matches, and distils
(about a minute on two cores) otherwise.

It always distils from the encoder in memory. A table read back from a model2vec `StaticModel`
folder (`save_pretrained` then `from_pretrained`, model2vec 0.8) does not line up with its tokenizer:
the shipped table was once built that way and its rows belonged to other tokens (nearest
neighbours of "math" were "##น", "dangers", "simplified"), which cost its kNN router 0.003
out-of-fold AIQ on RouterBench (`tests/test_static_encoder.py` now checks that the rows belong to
their tokens).
"""

import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from transformers import AutoModel, AutoTokenizer  # noqa: E402

from carrot_hub.default_encoder import DEFAULT_ENCODER_NAME, default_encoder_path  # noqa: E402
from carrot_hub.distillation import (  # noqa: E402
    DEFAULT_STATIC_DIMENSIONS,
    SHIPPED_STATIC_DIR,
    TABLE_FILE,
    _distill,
    distillation_key,
    save_static_table,
)


def main() -> None:
    source = default_encoder_path()
    model, tokenizer = AutoModel.from_pretrained(source), AutoTokenizer.from_pretrained(source)
    key = distillation_key(model, tokenizer, DEFAULT_STATIC_DIMENSIONS, None)
    start = time.perf_counter()
    table = _distill(model, tokenizer, DEFAULT_STATIC_DIMENSIONS, None, progress=True)
    table.distillation.update({"base_encoder": DEFAULT_ENCODER_NAME, "key": key})
    save_static_table(table, SHIPPED_STATIC_DIR)
    size_mb = sum(p.stat().st_size for p in SHIPPED_STATIC_DIR.iterdir()) / 1e6
    print(f"{table.vocab_size} × {table.dimensions} table in {time.perf_counter() - start:.0f} s -> "
          f"{SHIPPED_STATIC_DIR / TABLE_FILE} ({size_mb:.1f} MB with the tokenizer)")


if __name__ == "__main__":
    main()
