"""Configuration of a CARROT router.

This file travels to the Hub next to `modeling_carrot.py` as remote code: it imports only the
standard library and transformers.
"""

import math
import numbers
from collections.abc import Mapping
from typing import Any

from transformers import PretrainedConfig

PREDICTOR_KINDS = ("knn", "mlp")
# Rows `remember()` may add beyond the training rows when `knn_memory_cap` is None.
DEFAULT_MAX_REMEMBERED_ROWS = 100_000
# No LLM costs anywhere near a thousand dollars per token; a price above this is a typo (or an
# attack on the arithmetic: prices near float32's limit would overflow the utility).
MAX_PRICE_PER_MILLION = 1e9
# The utility is compared in float32; a cost scale below float32's smallest normal number would
# turn every cost into an infinite penalty.
MIN_COST_SCALE = 2.0**-126
ENCODER_KINDS = ("transformer", "static")


class CarrotConfig(PretrainedConfig):
    r"""
    Configuration of a [`CarrotRouter`]: the candidate LLMs and their prices, the decision rule's
    constants, the predictor kind and the sentence encoder's own configuration (so that one
    `model.safetensors` holds every weight).

    Args:
        candidate_models (`list[str]`):
            Names of the candidate LLMs, in the order of the prediction heads' outputs.
        input_price_per_million (`list[float]`):
            US dollars per million *prompt* tokens, one per candidate, same order.
        output_price_per_million (`list[float]`):
            US dollars per million *generated* tokens, one per candidate, same order.
        prices_recorded_on (`str`, *optional*):
            The date (ISO 8601) the price table was recorded; prices change, the card says when.
        prices_source (`str`, *optional*):
            Where the price table comes from (e.g. a price list at a given commit), for the card.
        cost_scale (`float`):
            The dollar amount per prompt that one full point of quality is worth at μ = 0.5.
            The router picks argmax_m (1 − μ)·quality_m − μ·cost_m / cost_scale, so paying Δ dollars
            more for a prompt is worth it when the predicted quality gain exceeds
            μ / (1 − μ) · Δ / cost_scale. Training sets it to the mean per-prompt cost of the most
            expensive candidate on the training data, which spreads μ ∈ [0, 1] over the whole
            cost range of the candidates.
        default_mu (`float`): μ used when `route()` is called without one.
        predictor_kind (`str`): `"knn"` (CARROT-KNN) or `"mlp"` (learned heads).
        knn_k (`int`): neighbours averaged by the kNN predictor.
        knn_memory_size (`int`): number of prompts stored by the kNN predictor (training and remembered).
        knn_memory_cap (`int`, *optional*): the most rows the kNN memory keeps when `remember()` grows
            it; None (the default) allows the training rows plus `DEFAULT_MAX_REMEMBERED_ROWS` more.
            Eviction: remembered rows go first, oldest first; training rows only when the cap is below
            their number (then their oldest make room for the newly remembered rows).
        knn_remembered_rows (`int`): how many of the memory's rows, its last ones in arrival order,
            were added by `remember()` (served traffic) rather than by training.
        knn_prompt_keys (`bool`): whether the kNN memory stores each row's prompt key (`prompt_keys`),
            so that `remember()` fills the cell of a prompt it already holds instead of adding a row.
        head_hidden_size (`int`): width of the hidden layer of the MLP heads.
        head_dropout (`float`): dropout of the MLP heads during training.
        encoder_kind (`str`): `"transformer"` (a BERT-family sentence encoder, mean pooled) or
            `"static"` (a token-embedding table distilled from such an encoder with model2vec: the
            prompt's embedding is the mean of its tokens' rows, about a hundred times cheaper).
        encoder_config (`dict`): the BERT-family encoder's config (as `to_dict()` gives it); empty
            for a static encoder.
        static_vocab_size (`int`): rows of the static encoder's token table; must equal the size of
            the tokenizer saved with the router.
        static_embedding_size (`int`): width of the static encoder's token table.
        static_distillation (`dict`, *optional*): how the static table was distilled (base encoder,
            dimensions, vocabulary), for the model card.
        max_prompt_tokens (`int`): prompts are truncated to this many tokens before encoding.
        truncation_side (`str`): `"left"` (the default) keeps a long prompt's end, where a prompt's
            question usually is; `"right"` keeps its beginning. Few-shot prompts share a long prefix:
            cut on the right, all prompts of one task would embed the same.
        encoder_name (`str`, *optional*): Hub id of the pretrained encoder (the card's `base_model`).
        quality_target (`str`): what predicted quality means, e.g. `"probability correct"`.
        training_data (`str`, *optional*): where the training prompts came from (for the card).
        training_data_caveats (`list[str]`): what the training data's card warns about (for the card).
        output_tokens_floor (`float`): smallest output-token prediction (tokens are never negative).
        support_k (`int`): a prompt's similarity to the training prompts is the mean cosine
            similarity of its `support_k` most similar training prompts.
        support_reference_size (`int`): number of stored leave-one-out similarities of the training
            prompts (the reference `support` is measured against); 0 for a router saved before
            support existed, whose support is reported as unknown.
        support_memory_size (`int`): training-prompt embeddings kept for support by routers without
            a kNN memory (MLP heads, fine-tuned); 0 for kNN routers, which use their memory.
        support_threshold (`float`): a prompt is in distribution when its support is above this:
            0.01 flags prompts less similar to the training data than 99% of the training prompts
            are to the others (and so about 1% of prompts like the training ones). Chosen on the
            training data.
        ood_policy (`str`): what `route()` does with prompts out of distribution: `"predict"` (route
            on the predicted quality), `"prior"` (route on each candidate's prior quality) or
            `"model:<name>"` (send them to that candidate).
        calibration_knots (`int`): knots of the per-candidate calibration map of predicted quality
            (piecewise linear, monotone); 0 when the router has none.
        calibration_method (`str`, *optional*): how that map was fitted (`"isotonic"`, `"platt"` or
            `"identity"`), for the card.
        shrink_floor (`float`): weight of the calibrated prediction (against the candidate's prior)
            at support 0; the weight rises linearly to 1 at `support_threshold`.
        prior_shrink (`float`): λ in [0, 1], how far every calibrated prediction moves toward the
            candidate's prior, in distribution too: the weight above is multiplied by 1 − λ. 0 (the
            default, and every router saved before it existed) leaves predictions as they are.
            Chosen at training time by out-of-fold routing AIQ.
        ood_pessimism (`float`): in [0, 1]: how far below its central estimate the quality of a
            prompt out of distribution is put, as a share of the band's half-width out of distribution
            (`spread_out`): at support 0 the quality is the band's lower end when 1, the central
            estimate when 0 (routers saved before it existed); the move shrinks linearly to nothing at
            `ood_pessimism_support`. Both chosen on the training data (see `carrot_hub.reliability`).
        ood_pessimism_support (`float`): in (0, 1]: the support from which quality is not lowered.
        cached_input_price_per_million (`list[float | None]`, *optional*): US$ per million input
            tokens the upstream has cached (prompt caching), per candidate; None where unknown (the
            input price is charged). Used for the earlier turns of a conversation that stays on its model.
        latency (`dict`, *optional*): a saved speed profile `{model: {"ttft_s": s, "tokens_per_s": t}}`
            for `route(max_latency_s=...)`; per-call `latency=` overrides it. Models left out have no
            latency estimate and are never excluded by a latency bound.
    """

    model_type = "carrot"

    def __init__(
        self,
        candidate_models: list[str] | None = None,
        input_price_per_million: list[float] | None = None,
        output_price_per_million: list[float] | None = None,
        prices_recorded_on: str | None = None,
        prices_source: str | None = None,
        cost_scale: float = 1e-3,
        default_mu: float = 0.5,
        predictor_kind: str = "knn",
        knn_k: int = 32,
        knn_memory_size: int = 0,
        knn_memory_cap: int | None = None,
        knn_remembered_rows: int = 0,
        knn_prompt_keys: bool = False,
        head_hidden_size: int = 256,
        head_dropout: float = 0.1,
        encoder_config: dict[str, Any] | None = None,
        encoder_kind: str = "transformer",
        static_vocab_size: int = 0,
        static_embedding_size: int = 0,
        static_distillation: dict[str, Any] | None = None,
        max_prompt_tokens: int = 128,
        truncation_side: str = "left",
        encoder_name: str | None = None,
        quality_target: str = "probability correct",
        training_data: str | None = None,
        training_data_caveats: list[str] | None = None,
        output_tokens_floor: float = 0.0,
        support_k: int = 8,
        support_reference_size: int = 0,
        support_memory_size: int = 0,
        support_threshold: float = 0.01,
        ood_policy: str = "predict",
        calibration_knots: int = 0,
        calibration_method: str | None = None,
        shrink_floor: float = 1.0,
        prior_shrink: float = 0.0,
        ood_pessimism: float = 0.0,
        ood_pessimism_support: float = 0.01,
        cached_input_price_per_million: list[float | None] | None = None,
        latency: dict[str, dict[str, float]] | None = None,
        **kwargs,
    ):
        self.candidate_models = list(candidate_models or [])
        n_models = len(self.candidate_models)
        self.input_price_per_million = list(input_price_per_million or [0.0] * n_models)
        self.output_price_per_million = list(output_price_per_million or [0.0] * n_models)
        self.prices_recorded_on = prices_recorded_on
        self.prices_source = prices_source
        self.cost_scale = cost_scale
        self.default_mu = float(default_mu)
        self.predictor_kind = predictor_kind
        self.knn_k = int(knn_k)
        self.knn_memory_size = int(knn_memory_size)
        self.knn_memory_cap = None if knn_memory_cap is None else int(knn_memory_cap)
        self.knn_remembered_rows = int(knn_remembered_rows)
        self.knn_prompt_keys = bool(knn_prompt_keys)
        self.head_hidden_size = int(head_hidden_size)
        self.head_dropout = float(head_dropout)
        self.encoder_config = dict(encoder_config or {})
        self.encoder_kind = encoder_kind
        self.static_vocab_size = int(static_vocab_size)
        self.static_embedding_size = int(static_embedding_size)
        self.static_distillation = dict(static_distillation) if static_distillation else None
        self.max_prompt_tokens = int(max_prompt_tokens)
        self.truncation_side = truncation_side
        self.encoder_name = encoder_name
        self.quality_target = quality_target
        self.training_data = training_data
        self.training_data_caveats = [str(caveat) for caveat in (training_data_caveats or [])]
        self.output_tokens_floor = output_tokens_floor
        self.support_k = int(support_k)
        self.support_reference_size = int(support_reference_size)
        self.support_memory_size = int(support_memory_size)
        self.support_threshold = float(support_threshold)
        self.ood_policy = ood_policy
        self.calibration_knots = int(calibration_knots)
        self.calibration_method = calibration_method
        self.shrink_floor = float(shrink_floor)
        self.prior_shrink = float(prior_shrink)
        self.ood_pessimism = float(ood_pessimism)
        self.ood_pessimism_support = float(ood_pessimism_support)
        self.cached_input_price_per_million = (
            None if cached_input_price_per_million is None else list(cached_input_price_per_million)
        )
        self.latency = None if latency is None else {name: dict(entry) for name, entry in latency.items()}
        super().__init__(**kwargs)
        self.validate_router_fields()

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any], **kwargs):
        """As `PretrainedConfig.from_dict`, refusing a saved config whose price table is missing."""
        if config_dict.get("candidate_models"):
            for field in ("input_price_per_million", "output_price_per_million"):
                if config_dict.get(field) is None and kwargs.get(field) is None:
                    # Left out, the table would default to $0 for every candidate: silently free.
                    raise ValueError(
                        f"The router's config.json lists candidate_models but has no {field}: every "
                        "candidate needs its prices. Restore config.json, or set the prices with `carrot set-prices`."
                    )
        return super().from_dict(config_dict, **kwargs)

    @property
    def num_candidates(self) -> int:
        return len(self.candidate_models)

    @property
    def prices(self) -> dict[str, dict[str, float]]:
        """
        The price table in force: `{model: {"input": $/M tokens, "output": $/M tokens}}`, with
        `"cached_input"` for the candidates that have a cached-input price.
        """
        cached = self.cached_input_price_per_million or [None] * len(self.candidate_models)
        table = {}
        for name, p_in, p_out, p_cached in zip(
            self.candidate_models, self.input_price_per_million, self.output_price_per_million, cached
        ):
            table[name] = {"input": p_in, "output": p_out}
            if p_cached is not None:
                table[name]["cached_input"] = p_cached
        return table

    def validate_router_fields(self) -> None:
        """Raise `ValueError` naming the offending entry when the router's fields disagree."""
        names = self.candidate_models
        if len(set(names)) != len(names):
            duplicates = sorted({n for n in names if names.count(n) > 1})
            raise ValueError(f"candidate_models lists {duplicates} more than once; names must be unique.")
        for field in ("input_price_per_million", "output_price_per_million"):
            values = getattr(self, field)
            if len(values) != len(names):
                raise ValueError(
                    f"{field} has {len(values)} entries but there are {len(names)} candidate_models; "
                    "give one price per candidate, in the same order."
                )
            setattr(self, field, [check_price(value, f"{field} of {name!r}") for name, value in zip(names, values)])
        if self.cached_input_price_per_million is not None:
            cached = self.cached_input_price_per_million
            if len(cached) != len(names):
                raise ValueError(
                    f"cached_input_price_per_million has {len(cached)} entries but there are {len(names)} "
                    "candidate_models; give one per candidate (null where there is none), in the same order."
                )
            self.cached_input_price_per_million = [
                None if value is None else check_price(value, f"cached_input_price_per_million of {name!r}")
                for name, value in zip(names, cached)
            ]
            if all(value is None for value in self.cached_input_price_per_million):
                self.cached_input_price_per_million = None
        if self.latency is not None:
            self.latency = {name: dict(zip(("ttft_s", "tokens_per_s"), entry))
                            for name, entry in check_latency_profile(self.latency, names).items()}
        if self.predictor_kind not in PREDICTOR_KINDS:
            raise ValueError(f"predictor_kind must be one of {PREDICTOR_KINDS}, got {self.predictor_kind!r}.")
        self.cost_scale = check_number(self.cost_scale, "cost_scale", "a number of US dollars per prompt")
        if not (math.isfinite(self.cost_scale) and self.cost_scale >= MIN_COST_SCALE):
            raise ValueError(
                f"cost_scale must be a finite positive number of dollars (at least {MIN_COST_SCALE:.3g}), "
                f"got {self.cost_scale!r}."
            )
        self.output_tokens_floor = check_number(self.output_tokens_floor, "output_tokens_floor", "a number of tokens")
        if not (math.isfinite(self.output_tokens_floor) and self.output_tokens_floor >= 0):
            raise ValueError(f"output_tokens_floor must be a finite number of tokens ≥ 0, got {self.output_tokens_floor!r}.")
        if self.encoder_kind not in ENCODER_KINDS:
            raise ValueError(
                f"encoder_kind must be one of {ENCODER_KINDS}, got {self.encoder_kind!r}: 'transformer' for a "
                "sentence encoder, 'static' for a token-embedding table distilled from one."
            )
        if self.encoder_kind == "static" and (self.static_vocab_size < 1 or self.static_embedding_size < 1):
            raise ValueError(
                "A static encoder needs static_vocab_size and static_embedding_size ≥ 1 (the token table's "
                f"shape), got {self.static_vocab_size} × {self.static_embedding_size}."
            )
        check_mu(self.default_mu)
        if self.knn_k < 1:
            raise ValueError(f"knn_k must be at least 1, got {self.knn_k}.")
        if self.knn_memory_cap is not None and self.knn_memory_cap < 1:
            raise ValueError(f"knn_memory_cap must be at least 1 row (or None), got {self.knn_memory_cap}.")
        if not 0 <= self.knn_remembered_rows <= max(self.knn_memory_size, 0):
            raise ValueError(
                f"knn_remembered_rows must be between 0 and knn_memory_size ({self.knn_memory_size}), "
                f"got {self.knn_remembered_rows}."
            )
        if self.truncation_side not in ("left", "right"):
            raise ValueError(f"truncation_side must be 'left' or 'right', got {self.truncation_side!r}.")
        if self.max_prompt_tokens < 2:
            raise ValueError(f"max_prompt_tokens must be at least 2, got {self.max_prompt_tokens}.")
        check_max_prompt_tokens(self.max_prompt_tokens, self.encoder_config)
        self.validate_reliability_fields()

    @property
    def has_support(self) -> bool:
        """Whether the router stores what `support` needs (routers saved before it existed do not)."""
        return self.support_reference_size > 0

    def validate_reliability_fields(self) -> None:
        """Raise `ValueError` naming the field when the support / calibration / ood fields are invalid."""
        if self.support_k < 1:
            raise ValueError(f"support_k must be at least 1, got {self.support_k}.")
        if self.support_reference_size < 0 or self.support_memory_size < 0:
            raise ValueError("support_reference_size and support_memory_size must be ≥ 0.")
        if not 0.0 <= self.support_threshold <= 1.0:
            raise ValueError(f"support_threshold must be in [0, 1], got {self.support_threshold!r}.")
        if not 0.0 <= self.shrink_floor <= 1.0:
            raise ValueError(f"shrink_floor must be in [0, 1], got {self.shrink_floor!r}.")
        if not 0.0 <= self.prior_shrink <= 1.0:
            raise ValueError(f"prior_shrink must be in [0, 1], got {self.prior_shrink!r}.")
        if not 0.0 <= self.ood_pessimism <= 1.0:
            raise ValueError(f"ood_pessimism must be in [0, 1], got {self.ood_pessimism!r}.")
        if not 0.0 < self.ood_pessimism_support <= 1.0:
            raise ValueError(f"ood_pessimism_support must be in (0, 1], got {self.ood_pessimism_support!r}.")
        if self.calibration_knots == 1 or self.calibration_knots < 0:
            raise ValueError(f"calibration_knots must be 0 (none) or at least 2, got {self.calibration_knots}.")
        check_ood_policy(self.ood_policy, self.candidate_models)


def check_max_prompt_tokens(max_prompt_tokens: int, encoder_config: dict) -> None:
    """Raise `ValueError` when `max_prompt_tokens` exceeds the encoder's positions (`max_position_embeddings`)."""
    position_limit = encoder_config.get("max_position_embeddings")
    if isinstance(position_limit, int) and max_prompt_tokens > position_limit:
        raise ValueError(
            f"max_prompt_tokens = {max_prompt_tokens} is more than the encoder can read: it has "
            f"{position_limit} positions (max_position_embeddings). Use at most {position_limit}."
        )


def check_number(value, what: str, meaning: str = "a number") -> float:
    """
    Return `value` as a float if it is a real number (Python's or numpy's, e.g. `np.float32(0.3)`,
    or a one-element tensor), else raise `ValueError` naming `what`. Booleans are not numbers here.
    """
    if type(value).__name__ in ("bool", "bool_") or isinstance(value, (str, bytes)):
        raise ValueError(f"{what} must be {meaning}, got {value!r} ({type(value).__name__}).")
    if not isinstance(value, numbers.Real):
        try:
            value = float(value)  # e.g. a one-element tensor
        except (TypeError, ValueError):
            raise ValueError(f"{what} must be {meaning}, got {value!r} ({type(value).__name__}).") from None
    return float(value)


def check_mu(mu) -> float:
    """Return μ as a float, or raise `ValueError` if it is not a number in [0, 1]."""
    value = check_number(mu, "mu", "a number in [0, 1]")
    if not (0.0 <= value <= 1.0):  # also rejects NaN
        raise ValueError(f"mu must be in [0, 1] (0 = best quality, 1 = cheapest), got {value!r}.")
    return value


OOD_POLICIES = ("predict", "prior", "model:<candidate name>")


def check_ood_policy(policy, candidate_models) -> str:
    """
    Return `policy` if it is `"predict"`, `"prior"` or `"model:<name>"` with `name` a candidate;
    else raise `ValueError` saying which values are accepted.
    """
    if policy in ("predict", "prior"):
        return policy
    if isinstance(policy, str) and policy.startswith("model:"):
        name = policy[len("model:") :]
        if name not in candidate_models:
            raise ValueError(
                f"ood policy {policy!r} names {name!r}, which is not a candidate of this router. "
                f"Known candidates: {', '.join(candidate_models)}."
            )
        return policy
    raise ValueError(
        f"ood policy must be 'predict', 'prior' or 'model:<candidate name>', got {policy!r}."
    )


def check_latency_profile(latency, candidate_models) -> dict[str, tuple[float, float]]:
    """
    `{model: {"ttft_s": s, "tokens_per_s": t}}` → `{model: (ttft_s, tokens_per_s)}`, checked: known
    candidates only, time to first token a finite number of seconds ≥ 0, speed finite and > 0.
    """
    if not isinstance(latency, Mapping):
        raise ValueError(
            'latency must be a mapping {model: {"ttft_s": seconds, "tokens_per_s": tokens per second}}, '
            f"got {type(latency).__name__}."
        )
    checked = {}
    for name, entry in latency.items():
        if name not in candidate_models:
            raise ValueError(
                f"latency names {name!r}, which is not a candidate of this router. Known candidates: "
                f"{', '.join(candidate_models)}."
            )
        if not isinstance(entry, Mapping) or set(entry) != {"ttft_s", "tokens_per_s"}:
            raise ValueError(
                f'latency of {name!r} must be {{"ttft_s": seconds, "tokens_per_s": tokens per second}}, got {entry!r}.'
            )
        ttft = check_number(entry["ttft_s"], f"latency ttft_s of {name!r}", "a number of seconds")
        speed = check_number(entry["tokens_per_s"], f"latency tokens_per_s of {name!r}", "a number of tokens per second")
        if not (math.isfinite(ttft) and ttft >= 0):
            raise ValueError(f"latency ttft_s of {name!r} must be a finite number of seconds ≥ 0, got {ttft!r}.")
        if not (math.isfinite(speed) and speed > 0):
            raise ValueError(f"latency tokens_per_s of {name!r} must be a finite speed > 0, got {speed!r}.")
        checked[name] = (ttft, speed)
    return checked


def check_max_latency(max_latency_s) -> float:
    """Return `max_latency_s` as a float, or raise `ValueError` if it is not a finite number of seconds ≥ 0."""
    value = check_number(max_latency_s, "max_latency_s", "a number of seconds")
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"max_latency_s must be a finite number of seconds ≥ 0, got {value!r}.")
    return value


def check_price(value, what: str) -> float:
    """Return a price as a float, or raise `ValueError` naming `what` if it is not finite, ≥ 0 and sane."""
    value = check_number(value, what, "a number of US dollars per million tokens")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{what} must be a finite price ≥ 0 in US dollars per million tokens, got {value!r}.")
    if value > MAX_PRICE_PER_MILLION:
        raise ValueError(
            f"{what} is {value:g} US dollars per million tokens, more than any LLM costs "
            f"(the limit is {MAX_PRICE_PER_MILLION:g}); prices are in $ per million tokens."
        )
    return value


def check_positive_int(value, what: str) -> int:
    """Return `value` as an int if it is a positive integer (Python's or numpy's), else raise `ValueError`."""
    if type(value).__name__ in ("bool", "bool_") or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{what} must be a positive integer, got {value!r}.")
    return int(value)
