"""Build the static encoder that ships inside the package (all-MiniLM-L6-v2, 128 dimensions).

    python scripts/build_static_default.py                                   # the shipped table
    python scripts/build_static_default.py --token-trained --out DIR         # the token-trained candidate

Writes carrot_hub/default_data/static-all-MiniLM-L6-v2 (the token table in float16 and its
tokenizer), keyed by the encoder's weights and vocabulary and the width:
`carrot_hub.distillation.distill_static_encoder()` uses it only when the key matches, and distils
(about a minute on two cores) otherwise. The shipped table is model2vec's plain distillation (PCA
to 128).

`--token-trained` builds the candidate that was compared with it and not shipped (docs/static-encoder.md,
"On unseen tasks": ahead on three held-out tasks, behind on MBPP): trained in the manner of
model2vec's tokenlearn (`training.static_tokens.learn_token_table`): model2vec distils MiniLM's
vocabulary without PCA (384 wide), the rows are trained so that the mean of a prompt's rows has the
highest cosine with MiniLM's embedding of that prompt, on the train prompts of both packaged tables
(MiniLM's embeddings of them ship as `train_embeddings.safetensors`; no score is read, no test
prompt is used), for at most 8 epochs, and the trained rows are reduced by PCA to 128. The folder
is laid out as the shipped one (`carrot_hub.distillation.load_static_table` reads it).

It always distils from the encoder in memory. A table read back from a model2vec `StaticModel`
folder (`save_pretrained` then `from_pretrained`, model2vec 0.8) does not line up with its tokenizer:
the shipped table was once built that way and its rows belonged to other tokens (nearest
neighbours of "math" were "##น", "dangers", "simplified"), which cost its kNN router 0.003
out-of-fold AIQ on RouterBench (`tests/test_static_encoder.py` now checks that the rows belong to
their tokens).
"""

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from transformers import AutoModel, AutoTokenizer  # noqa: E402

from carrot_hub.default_encoder import DEFAULT_ENCODER_NAME, default_encoder_path  # noqa: E402
from carrot_hub.distillation import (  # noqa: E402
    DEFAULT_STATIC_DIMENSIONS,
    SHIPPED_STATIC_DIR,
    TABLE_FILE,
    StaticEncoderTable,
    _distill,
    distillation_key,
    save_static_table,
)

TABLES = ("routerbench-0shot", "zeroeval-2024")
LEARNING_EPOCHS = 8  # as `python -m training.static_unseen` trains the tables it compares


def training_corpus() -> tuple[list, torch.Tensor]:
    """The train prompts of both packaged tables: `(static token ids per prompt, MiniLM embeddings (n, 384))`."""
    from carrot_hub.building import DEFAULT_STATIC_MAX_PROMPT_TOKENS, new_router
    from carrot_hub.data.packaged import EMBEDDINGS_FILENAME, packaged_table_dir
    from carrot_hub.default import new_default_router
    from carrot_hub.embedding_cache import embeddings_key, load_embeddings

    token_ids, targets = [], []
    for name in TABLES:
        minilm, table = new_default_router("transformer", name)
        embeddings = load_embeddings(packaged_table_dir(name) / EMBEDDINGS_FILENAME, embeddings_key(minilm, table.prompts))
        if embeddings is None:  # another encoder version or cutting rule than the shipped embeddings'
            embeddings = minilm.encode(table.prompts, batch_size=32, progress=True).embeddings
        # Only the static router's tokenizing is used (the same whatever its rows hold).
        static = new_router(table.models, table.prices, encoder_kind="static", progress=False,
                            max_prompt_tokens=DEFAULT_STATIC_MAX_PROMPT_TOKENS, truncation_side="left")
        ids, _, _ = static.prompt_encoder.tokenize(static, list(table.prompts))
        token_ids += ids
        targets.append(torch.as_tensor(embeddings, dtype=torch.float32))
    return token_ids, torch.cat(targets)


def token_trained(model, tokenizer) -> StaticEncoderTable:
    """The shipped recipe (see the module docstring)."""
    from training.static_tokens import learn_token_table, pca_rows

    plain = _distill(model, tokenizer, None, None, progress=True)
    token_ids, targets = training_corpus()
    rows, report = learn_token_table(plain.token_embeddings, token_ids, targets, objective="cosine", max_epochs=LEARNING_EPOCHS,
                                     log=lambda line: print(line, flush=True))
    rows = pca_rows(rows, DEFAULT_STATIC_DIMENSIONS)
    distillation = {**plain.distillation, "method": "model2vec, then token-trained (cosine to MiniLM, tokenlearn's loop), then PCA",
                    "dimensions": DEFAULT_STATIC_DIMENSIONS, "training_corpus": "train prompts of " + ", ".join(TABLES),
                    "corpus_prompts": report["corpus_prompts"], "epochs": report["epochs"],
                    "best_validation_loss": report["best_validation_loss"]}
    return StaticEncoderTable(rows, torch.nn.functional.normalize(rows.mean(0), dim=0), plain.tokenizer, distillation)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--token-trained", action="store_true", help="the token-trained candidate instead of the plain distillation")
    parser.add_argument("--out", default=str(SHIPPED_STATIC_DIR), help="folder to write (default: the shipped table's)")
    args = parser.parse_args()
    torch.manual_seed(0)
    source = default_encoder_path()
    model, tokenizer = AutoModel.from_pretrained(source), AutoTokenizer.from_pretrained(source)
    key = distillation_key(model, tokenizer, DEFAULT_STATIC_DIMENSIONS, None)
    start = time.perf_counter()
    if args.token_trained:
        table = token_trained(model, tokenizer)
    else:
        table = _distill(model, tokenizer, DEFAULT_STATIC_DIMENSIONS, None, progress=True)
    table.distillation.update({"base_encoder": DEFAULT_ENCODER_NAME, "key": key})
    out = Path(args.out)
    save_static_table(table, out)
    size_mb = sum(p.stat().st_size for p in out.iterdir()) / 1e6
    print(f"{table.vocab_size} × {table.dimensions} table in {time.perf_counter() - start:.0f} s -> "
          f"{out / TABLE_FILE} ({size_mb:.1f} MB with the tokenizer)")


if __name__ == "__main__":
    main()
