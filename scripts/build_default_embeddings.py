"""Encode the default routers' train prompts once and save them inside the package.

    python scripts/build_default_embeddings.py                  # every packaged table whose file is stale
    python scripts/build_default_embeddings.py --data zeroeval-2024 [--force]

Writes carrot_hub/default_data/<table>/train_embeddings.safetensors, keyed by the encoder weights,
the prompt cutting rule (the table's default_router.json) and the prompts;
`carrot_hub.default_router(data=<table>)` uses it only when the key matches, and encodes the
prompts itself otherwise.
"""

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from carrot_hub.data.packaged import EMBEDDINGS_FILENAME, packaged_table_dir, packaged_tables  # noqa: E402
from carrot_hub.default import new_default_router  # noqa: E402
from carrot_hub.embedding_cache import embeddings_key, load_embeddings, save_embeddings  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", action="append", choices=packaged_tables(), help="packaged table (repeatable; default: all)")
    parser.add_argument("--force", action="store_true", help="re-encode even when the shipped file's key matches")
    args = parser.parse_args()
    for name in args.data or packaged_tables():
        router, table = new_default_router(data=name)
        path = packaged_table_dir(name) / EMBEDDINGS_FILENAME
        key = embeddings_key(router, table.prompts)
        if not args.force and load_embeddings(path, key) is not None:
            print(f"{name}: {path} is up to date")
            continue
        start = time.perf_counter()
        embeddings = router.encode(table.prompts, batch_size=32, progress=True).embeddings
        save_embeddings(path, embeddings, key)
        size_mb = path.stat().st_size / 1e6
        print(f"{name}: {embeddings.shape[0]} embeddings in {time.perf_counter() - start:.0f} s -> {path} ({size_mb:.1f} MB)")


if __name__ == "__main__":
    main()
