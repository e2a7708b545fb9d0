"""Creating a fresh router around a pretrained sentence encoder."""

from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from transformers import AutoModel, AutoTokenizer

from .configuration_carrot import ENCODER_KINDS, CarrotConfig
from .default_encoder import DEFAULT_ENCODER_NAME, default_encoder_path
from .modeling_carrot import CarrotRouter, prompt_key_of


# all-MiniLM-L6-v2 was trained on 128-token inputs; on RouterBench, 5-fold out-of-fold routing on
# the train split is as good at 128 kept tokens as at 256 (AIQ 0.833 vs 0.831), and one prompt
# encodes in about half the time. Long prompts keep their end (see `truncation_side`).
DEFAULT_MAX_PROMPT_TOKENS = 128
# A static encoder reads a prompt's last 128 tokens: on RouterBench's train split its 5-fold
# out-of-fold routing AIQ (kNN, k by the same cross-validation; mean of 5 fold seeds) is 0.8313 at
# 128, 0.8305 at 256 and 0.8303 at 512 kept tokens; 128 wins for every seed but one.
DEFAULT_STATIC_MAX_PROMPT_TOKENS = 128


def new_router(
    candidate_models: Sequence[str],
    prices: Mapping[str, Mapping[str, float]],
    encoder: str | None = None,
    predictor_kind: str = "knn",
    encoder_kind: str = "transformer",
    static_dimensions: int | None = None,
    static_vocabulary: Sequence[str] | None = None,
    static_cache_dir: str | Path | None = None,
    progress: bool = True,
    **config_fields,
) -> CarrotRouter:
    """
    A router with the encoder's pretrained weights and tokenizer, an untrained predictor, and the
    given candidates and prices (`{model: {"input": $/M, "output": $/M}}`, every candidate named).

    `encoder_kind="static"` distills a static token table from `encoder` with model2vec (see
    `carrot_hub.distillation`; `static_dimensions` wide, default 256, with `static_vocabulary` as
    extra whole words), or takes it from the shipped or cached copy when one matches.

    `config_fields` go to [`CarrotConfig`] (cost_scale, knn_k, knn_memory_size, max_prompt_tokens, ...).
    """
    missing = [name for name in candidate_models if name not in prices]
    if missing:
        raise ValueError(f"prices has no entry for {missing}; every candidate needs an input and output price.")
    unknown = [name for name in prices if name not in candidate_models]
    if unknown:
        raise ValueError(f"prices names {unknown}, which are not among candidate_models {list(candidate_models)}.")
    if encoder_kind not in ENCODER_KINDS:
        raise ValueError(
            f"encoder_kind must be one of {', '.join(ENCODER_KINDS)}, got {encoder_kind!r}: 'transformer' runs "
            "the sentence encoder, 'static' a token table distilled from it."
        )
    if encoder_kind == "static":
        return _new_static_router(
            candidate_models, prices, encoder, predictor_kind, static_dimensions, static_vocabulary,
            static_cache_dir, progress, config_fields,
        )
    if static_dimensions is not None or static_vocabulary is not None:
        raise ValueError("static_dimensions and static_vocabulary apply to encoder_kind='static' only.")
    if encoder is None:
        encoder, encoder_name = default_encoder_path(), DEFAULT_ENCODER_NAME
    else:
        encoder_name = None if Path(encoder).exists() else encoder  # a Hub id names itself
    config_fields.setdefault("encoder_name", encoder_name)
    pretrained = AutoModel.from_pretrained(encoder)  # with its pooler if any: the router drops it
    tokenizer = AutoTokenizer.from_pretrained(encoder)
    for machine_specific in ("local_files_only", "is_local", "_name_or_path"):
        tokenizer.init_kwargs.pop(machine_specific, None)
    encoder_config = pretrained.config.to_dict()
    encoder_config.pop("_name_or_path", None)  # a local path means nothing on another machine
    max_tokens = config_fields.pop("max_prompt_tokens", None)
    if max_tokens is None:  # `is None`, not `or`: a 0 given must reach the config's check, not become the default
        max_tokens = min(DEFAULT_MAX_PROMPT_TOKENS, getattr(pretrained.config, "max_position_embeddings", 512))
    config = CarrotConfig(
        candidate_models=list(candidate_models),
        input_price_per_million=[float(prices[name]["input"]) for name in candidate_models],
        output_price_per_million=[float(prices[name]["output"]) for name in candidate_models],
        predictor_kind=predictor_kind,
        encoder_config=encoder_config,
        max_prompt_tokens=max_tokens,
        **config_fields,
    )
    router = CarrotRouter(config)
    encoder_weights = {k: v for k, v in pretrained.state_dict().items() if not k.startswith("pooler.")}
    missing_keys, _ = router.encoder.load_state_dict(encoder_weights, strict=False)
    if missing_keys:
        raise ValueError(f"The encoder at {encoder} lacks weights the router needs: {missing_keys[:5]}")
    router.set_tokenizer(tokenizer)
    router.eval()
    return router


def _new_static_router(
    candidate_models, prices, encoder, predictor_kind, dimensions, vocabulary, cache_dir, progress, config_fields
) -> CarrotRouter:
    from .distillation import DEFAULT_STATIC_DIMENSIONS, distill_static_encoder

    table = distill_static_encoder(
        encoder,
        dimensions=DEFAULT_STATIC_DIMENSIONS if dimensions is None else dimensions,
        vocabulary=None if vocabulary is None else list(vocabulary),
        cache_dir=cache_dir,
        progress=progress,
    )
    if encoder is None:
        config_fields.setdefault("encoder_name", DEFAULT_ENCODER_NAME)
    elif not Path(encoder).exists():
        config_fields.setdefault("encoder_name", encoder)
    config = CarrotConfig(
        candidate_models=list(candidate_models),
        input_price_per_million=[float(prices[name]["input"]) for name in candidate_models],
        output_price_per_million=[float(prices[name]["output"]) for name in candidate_models],
        predictor_kind=predictor_kind,
        encoder_kind="static",
        static_vocab_size=table.vocab_size,
        static_embedding_size=table.dimensions,
        static_distillation=table.distillation,
        max_prompt_tokens=_given_or(config_fields.pop("max_prompt_tokens", None), DEFAULT_STATIC_MAX_PROMPT_TOKENS),
        **config_fields,
    )
    router = CarrotRouter(config)
    with torch.no_grad():
        router.encoder.token_embeddings.weight.copy_(table.token_embeddings)
        router.encoder.fallback.copy_(table.fallback)
    router.set_tokenizer(table.tokenizer)
    router.eval()
    return router


def default_cost_scale(table) -> float:
    """
    The mean per-prompt dollar cost of the most expensive candidate on `table` (a RoutingTable with
    prices): at μ = 0.5 the router will then pay that model's whole cost for one point of quality.
    """
    import numpy as np

    mean_cost = np.nanmean(table.cost(), axis=0)
    scale = float(np.nanmax(mean_cost))
    if not np.isfinite(scale) or scale <= 0:
        raise ValueError("Cannot derive a cost scale: the table's costs are all missing or zero.")
    return scale


def fit_knn(router: CarrotRouter, embeddings, table, support: bool = True) -> CarrotRouter:
    """
    Fill a kNN router's memory with `embeddings (n, hidden)` and the table's scores and output
    tokens `(n, n_models)`. The router's candidates must equal the table's models, in order.
    With `support` (default) it also gets support statistics and each candidate's prior
    ([`fit_support_and_prior`]); training leaves them out when the reliability fit follows, which
    fits both again (the support search is the costliest part of filling a large memory).
    """
    if router.config.candidate_models != list(table.models):
        raise ValueError(
            f"The router's candidates {router.config.candidate_models} differ from the table's models {table.models}."
        )
    if router.config.predictor_kind != "knn":
        raise ValueError(f"fit_knn needs a router with predictor_kind='knn', not {router.config.predictor_kind!r}.")
    router.predictor.fill(
        torch.as_tensor(embeddings, dtype=torch.float32),
        torch.as_tensor(table.scores, dtype=torch.float32),
        torch.as_tensor(table.output_tokens, dtype=torch.float32),
        torch.tensor([prompt_key_of(prompt) for prompt in table.prompts], dtype=torch.int64),
    )
    router.config.knn_prompt_keys = True
    router.predictor.keep_prompt_keys()
    router.config.knn_memory_size = int(embeddings.shape[0])
    router.config.knn_remembered_rows = 0
    if support:
        fit_support_and_prior(router, table)
    return router


def fit_support_and_prior(router: CarrotRouter, table, embeddings=None, **support_options) -> CarrotRouter:
    """
    Give a trained router its support statistics ([`CarrotRouter.fit_support`]: the kNN memory,
    or `embeddings (n, hidden)` of the table's prompts for other routers) and each candidate's prior
    quality (its mean observed score on `table`), with an identity calibration and no shrinkage:
    training replaces these with maps and a shrinkage fitted out of fold (`carrot_hub.reliability`).
    """
    import numpy as np

    router.fit_support(embeddings, **support_options)
    with np.errstate(all="ignore"):
        prior = np.nan_to_num(np.nanmean(np.asarray(table.scores, dtype=np.float64), axis=0), nan=0.5)
    n_models = router.config.num_candidates
    identity = torch.tensor([0.0, 1.0]).repeat(n_models, 1)
    router.set_calibration(identity, identity.clone(), torch.as_tensor(prior, dtype=torch.float32), method="identity")
    return router


def _given_or(value, default):
    """`value` unless it is None (a 0 given is kept, to be refused by the check that reads it)."""
    return default if value is None else value
