"""Distil the static encoder that ships inside the package (all-MiniLM-L6-v2, 256 dimensions).

    python scripts/build_static_default.py [--from-model2vec FOLDER]

Writes carrot_hub/default_data/static-all-MiniLM-L6-v2 (the token table in float16 and its
tokenizer), keyed by the encoder's weights and vocabulary and the distillation options:
`carrot_hub.distillation.distill_static_encoder()` uses it only when the key matches, and distils
(minutes) otherwise. `--from-model2vec` takes a model2vec `StaticModel` folder that `distill`
already wrote for the same encoder with the default options, instead of distilling again.
"""

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from transformers import AutoModel, AutoTokenizer  # noqa: E402

from carrot_hub.building import DEFAULT_ENCODER_NAME, default_encoder_path  # noqa: E402
from carrot_hub.distillation import (  # noqa: E402
    DEFAULT_STATIC_DIMENSIONS,
    SHIPPED_STATIC_DIR,
    TABLE_FILE,
    _distill,
    distillation_key,
    save_static_table,
    table_from_model2vec,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--from-model2vec", help="a model2vec StaticModel folder distilled from the default encoder")
    args = parser.parse_args()
    source = default_encoder_path()
    model, tokenizer = AutoModel.from_pretrained(source), AutoTokenizer.from_pretrained(source)
    key = distillation_key(model, tokenizer, DEFAULT_STATIC_DIMENSIONS, None)
    start = time.perf_counter()
    if args.from_model2vec:
        from model2vec import StaticModel

        static = StaticModel.from_pretrained(args.from_model2vec)
        if static.dim != DEFAULT_STATIC_DIMENSIONS:
            raise SystemExit(f"{args.from_model2vec} has {static.dim} dimensions, not {DEFAULT_STATIC_DIMENSIONS}.")
        table = table_from_model2vec(static)
    else:
        table = _distill(model, tokenizer, DEFAULT_STATIC_DIMENSIONS, None, progress=True)
    table.distillation.update({"base_encoder": DEFAULT_ENCODER_NAME, "key": key})
    save_static_table(table, SHIPPED_STATIC_DIR)
    size_mb = sum(p.stat().st_size for p in SHIPPED_STATIC_DIR.iterdir()) / 1e6
    print(f"{table.vocab_size} × {table.dimensions} table in {time.perf_counter() - start:.0f} s -> "
          f"{SHIPPED_STATIC_DIR / TABLE_FILE} ({size_mb:.1f} MB with the tokenizer)")


if __name__ == "__main__":
    main()
