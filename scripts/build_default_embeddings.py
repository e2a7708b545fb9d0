"""Encode the default router's train prompts once and save them inside the package.

    python scripts/build_default_embeddings.py

Writes carrot_hub/default_data/routerbench-0shot/train_embeddings.safetensors, keyed by the encoder
weights, the prompt cutting rule and the prompts; `carrot_hub.default_router()` uses it only when
the key matches, and encodes the prompts itself otherwise.
"""

import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from carrot_hub.default import DEFAULT_EMBEDDINGS, new_default_router  # noqa: E402
from carrot_hub.embedding_cache import embeddings_key, save_embeddings  # noqa: E402


def main() -> None:
    router, table = new_default_router()
    start = time.perf_counter()
    embeddings = router.encode(table.prompts, batch_size=32, progress=True).embeddings
    save_embeddings(DEFAULT_EMBEDDINGS, embeddings, embeddings_key(router, table.prompts))
    size_mb = DEFAULT_EMBEDDINGS.stat().st_size / 1e6
    print(f"{embeddings.shape[0]} embeddings in {time.perf_counter() - start:.0f} s -> {DEFAULT_EMBEDDINGS} ({size_mb:.1f} MB)")


if __name__ == "__main__":
    main()
