"""What a CARROT router predicts and decides, and the cost-aware decision rule that turns
predictions, μ and prices into a choice of LLM.

This file travels to the Hub next to `modeling_carrot.py` as remote code: it imports only torch,
transformers, the standard library and its flat siblings (relative imports).
"""

import math
from dataclasses import dataclass, field

import torch
from torch.nn import functional as F
from transformers.utils import ModelOutput


DOLLARS_PER_MILLION = 1e6

@dataclass
class CarrotRouterOutput(ModelOutput):
    """
    Output of [`CarrotRouter.forward`].

    Args:
        loss (`torch.FloatTensor` of shape `()`, *optional*): quality BCE + log-token MSE, when targets are given.
        quality (`torch.FloatTensor` of shape `(batch, n_models)`): predicted quality in [0, 1].
        output_tokens (`torch.FloatTensor` of shape `(batch, n_models)`): predicted output tokens (≥ 0).
        embeddings (`torch.FloatTensor` of shape `(batch, hidden)`): L2-normalised prompt embeddings.
    """

    loss: torch.FloatTensor | None = None
    quality: torch.FloatTensor | None = None
    output_tokens: torch.FloatTensor | None = None
    embeddings: torch.FloatTensor | None = None


@dataclass
class PromptEncoding:
    """
    Prompts turned into what the predictor needs.

    Args:
        embeddings (`torch.FloatTensor` of shape `(batch, hidden)`): L2-normalised prompt embeddings.
        input_tokens (`torch.FloatTensor` of shape `(batch,)`): prompt tokens (untruncated).
        truncated (`list[bool]`): whether the prompt was cut to `max_prompt_tokens` before encoding.
        fallback_embedding (`list[bool]`): whether the prompt had no token in a static encoder's
            vocabulary and got its fallback embedding (always False for a transformer encoder).
    """

    embeddings: torch.Tensor
    input_tokens: torch.Tensor
    truncated: list[bool] = field(default_factory=list)
    fallback_embedding: list[bool] = field(default_factory=list)


@dataclass
class PromptPredictions:
    """
    What the router predicts for a list of prompts, before any μ or price is applied.

    Args:
        quality (`torch.FloatTensor` of shape `(batch, n_models)`): predicted quality in [0, 1].
        output_tokens (`torch.FloatTensor` of shape `(batch, n_models)`): predicted output tokens.
        input_tokens (`torch.FloatTensor` of shape `(batch,)`): prompt tokens (untruncated).
        truncated (`list[bool]`): whether the prompt was cut to `max_prompt_tokens` before encoding.
        candidate_models (`list[str]`, *optional*): the candidates of the router that made them, in
            column order (so that another router cannot mistake them for its own).
        support (`torch.FloatTensor` of shape `(batch,)`, *optional*): how well the training prompts
            cover each prompt, in [0, 1] (see [`CarrotReliability`]); NaN where unknown.
        quality_low, quality_high (`torch.FloatTensor` of shape `(batch, n_models)`, *optional*): a
            band around `quality` that widens as support falls.
        fallback_embedding (`list[bool]`): prompts embedded with the static encoder's fallback.
    """

    quality: torch.Tensor
    output_tokens: torch.Tensor
    input_tokens: torch.Tensor
    truncated: list[bool] = field(default_factory=list)
    candidate_models: list[str] | None = None
    support: torch.Tensor | None = None
    quality_low: torch.Tensor | None = None
    quality_high: torch.Tensor | None = None
    fallback_embedding: list[bool] = field(default_factory=list)

    def __len__(self) -> int:
        return self.quality.shape[0]

    def select(self, rows) -> "PromptPredictions":
        """
        The predictions of some prompts, every field kept: `rows` is a list of row indices or a
        `(batch,)` bool / int64 tensor; the result has `len(rows)` prompts, in that order.
        """
        index = torch.as_tensor(rows)
        index = (index.nonzero().flatten() if index.dtype == torch.bool else index).long().reshape(-1)
        positions = index.tolist()

        def rows_of(values):
            return None if values is None else values[index]

        def flags_of(values):
            return [values[position] for position in positions] if values else []

        return PromptPredictions(
            quality=self.quality[index],
            output_tokens=self.output_tokens[index],
            input_tokens=self.input_tokens[index],
            truncated=flags_of(self.truncated),
            candidate_models=None if self.candidate_models is None else list(self.candidate_models),
            support=rows_of(self.support),
            quality_low=rows_of(self.quality_low),
            quality_high=rows_of(self.quality_high),
            fallback_embedding=flags_of(self.fallback_embedding),
        )


class RoutingOptionError(ValueError):
    """A routing option the router refuses; `option` names it (`"mu"`, `"prices"`, `"allowed"`, `"max_cost"`, `"ood"`)."""

    def __init__(self, message: str, option: str):
        super().__init__(message)
        self.option = option


@dataclass(frozen=True)
class RoutingOptions:
    """
    How a router decides: μ, the price table, the allowed candidates, the cost cap and the
    out-of-distribution policy, resolved against one router's candidates and checked once, by
    [`CarrotRouter.routing_options`]. `route()` and `decide()` take it as `options=`, and the CLI,
    calibration, the pipeline and the gateway pass it along instead of checking the raw values again.

    Frozen and hashable: equal options decide the same way, so requests can be grouped by them.
    A new option is a new field with a default here and a keyword in `routing_options` that checks it.

    Args:
        candidate_models (`tuple[str, ...]`): the candidates it was resolved for, in column order.
        mu (`float`): the quality/cost trade-off in [0, 1].
        input_prices, output_prices (`tuple[float, ...]`): $/M tokens per candidate, overrides applied.
        allowed (`tuple[str, ...]`, *optional*): the candidates that may be chosen, in column order;
            None = all of them.
        max_cost (`float`, *optional*): the most US dollars a prompt's chosen candidate may cost.
        ood (`str`): the policy for prompts out of distribution: `"predict"`, `"prior"` or `"model:<name>"`.
        cached_input_prices (`tuple[float | None, ...]`, *optional*): $/M cached input tokens per
            candidate (None: no cached price, the input price is charged); None when no candidate has one.
        latency (`tuple[tuple[float, float] | None, ...]`, *optional*): `(ttft_s, tokens_per_s)` per
            candidate, None where unknown; None when no candidate has a profile.
        max_latency_s (`float`, *optional*): the longest predicted latency a chosen candidate may have.
    """

    candidate_models: tuple[str, ...]
    mu: float
    input_prices: tuple[float, ...]
    output_prices: tuple[float, ...]
    allowed: tuple[str, ...] | None = None
    max_cost: float | None = None
    ood: str = "predict"
    cached_input_prices: tuple[float | None, ...] | None = None
    latency: tuple[tuple[float, float] | None, ...] | None = None
    max_latency_s: float | None = None

    @property
    def prices(self) -> dict:
        """The price table in force, `{model: {"input": $/M, "output": $/M}}` (and `"cached_input"` where known)."""
        cached = self.cached_input_prices or (None,) * len(self.candidate_models)
        table = {}
        for name, p_in, p_out, p_cached in zip(self.candidate_models, self.input_prices, self.output_prices, cached):
            table[name] = {"input": p_in, "output": p_out}
            if p_cached is not None:
                table[name]["cached_input"] = p_cached
        return table

    def cached_price_tensor(self) -> torch.Tensor:
        """$/M cached input tokens `(n_models,)` float64: the input price where a candidate has no cached price."""
        cached = self.cached_input_prices or (None,) * len(self.candidate_models)
        return torch.tensor([p_in if c is None else c for p_in, c in zip(self.input_prices, cached)], dtype=torch.float64)

    def latency_tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Time to first token (s) and tokens per second `(n_models,)` float64 each, NaN where unknown."""
        profile = self.latency or (None,) * len(self.candidate_models)
        ttft = [math.nan if entry is None else entry[0] for entry in profile]
        speed = [math.nan if entry is None else entry[1] for entry in profile]
        return torch.tensor(ttft, dtype=torch.float64), torch.tensor(speed, dtype=torch.float64)

    def price_tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Input and output $/M tokens, `(n_models,)` float64 each (prices round-trip exactly)."""
        return (
            torch.tensor(self.input_prices, dtype=torch.float64),
            torch.tensor(self.output_prices, dtype=torch.float64),
        )

    def allowed_mask(self) -> torch.Tensor | None:
        """`(n_models,)` bool, the candidates that may be chosen; None when all may."""
        if self.allowed is None:
            return None
        allowed = set(self.allowed)
        return torch.tensor([name in allowed for name in self.candidate_models], dtype=torch.bool)


@dataclass
class RoutingDecision:
    """
    The router's decision for a list of prompts.

    Args:
        models (`list[str]`): the chosen candidate per prompt.
        model_indices (`torch.LongTensor` of shape `(batch,)`): index of the chosen candidate.
        candidate_models (`list[str]`): the candidates, in column order of the tensors below.
        quality (`torch.FloatTensor` of shape `(batch, n_models)`): predicted quality.
        output_tokens (`torch.FloatTensor` of shape `(batch, n_models)`): predicted output tokens.
        input_tokens (`torch.FloatTensor` of shape `(batch,)`): prompt tokens counted by the router's tokenizer.
        cost (`torch.FloatTensor` of shape `(batch, n_models)`): predicted US dollars with the prices in force.
        utility (`torch.FloatTensor` of shape `(batch, n_models)`): (1 − μ)·quality − μ·cost / cost_scale;
            `-inf` for candidates excluded by `allowed` or `max_cost`.
        mu (`float`): the μ used.
        prices (`dict`): the price table used, `{model: {"input": $/M, "output": $/M}}`.
        truncated (`list[bool]`): prompts cut to the router's maximum length before encoding.
        over_budget (`list[bool]`): prompts for which no allowed candidate fitted `max_cost`; the
            cheapest allowed candidate was chosen instead.
        support (`torch.FloatTensor` of shape `(batch,)`): where each prompt's similarity to the
            training prompts falls among the training prompts' own leave-one-out similarities
            (0.02 = less similar than 98% of them); NaN = unknown (a router saved before support).
        in_distribution (`list[bool | None]`): support above `config.support_threshold`; None = unknown.
        quality_low, quality_high (`torch.FloatTensor` of shape `(batch, n_models)`): a band around
            `quality` that widens as support falls (equal to `quality` when support is unknown).
        ood_policy (`str`): the policy used for prompts out of distribution.
        ood_applied (`list[bool]`): prompts the policy changed the rule for (out of distribution
            under `"prior"` or `"model:<name>"`).
        fallback_embedding (`list[bool]`): prompts none of whose tokens is in a static encoder's
            vocabulary (e.g. only emoji or an unknown script): they were embedded with the encoder's
            fallback embedding, so their predictions are those of a typical prompt, not of this one.
        options (`RoutingOptions`, *optional*): the options the decision was made with.
        latency (`torch.FloatTensor` of shape `(batch, n_models)`): predicted seconds to the whole
            answer (time to first token + predicted output tokens / tokens per second); NaN where
            the candidate has no latency profile.
        over_latency (`list[bool]`): prompts for which no allowed candidate fitted `max_latency_s`;
            the fastest allowed candidate was chosen instead.
    """

    models: list[str]
    model_indices: torch.Tensor
    candidate_models: list[str]
    quality: torch.Tensor
    output_tokens: torch.Tensor
    input_tokens: torch.Tensor
    cost: torch.Tensor
    utility: torch.Tensor
    mu: float
    prices: dict
    truncated: list[bool]
    over_budget: list[bool]
    support: torch.Tensor | None = None
    in_distribution: list | None = None
    quality_low: torch.Tensor | None = None
    quality_high: torch.Tensor | None = None
    ood_policy: str = "predict"
    ood_applied: list[bool] | None = None
    fallback_embedding: list[bool] | None = None
    options: RoutingOptions | None = None
    latency: torch.Tensor | None = None
    over_latency: list[bool] | None = None

    def __post_init__(self):
        n = len(self.models)
        if self.latency is None:
            self.latency = torch.full(tuple(self.cost.shape), math.nan)
        if self.over_latency is None:
            self.over_latency = [False] * n
        if self.support is None:
            self.support = torch.full((n,), math.nan)
        if self.in_distribution is None:
            self.in_distribution = [None] * n
        if self.quality_low is None:
            self.quality_low = self.quality
        if self.quality_high is None:
            self.quality_high = self.quality
        if self.ood_applied is None:
            self.ood_applied = [False] * n
        if not self.fallback_embedding:
            self.fallback_embedding = [False] * n

    def __len__(self) -> int:
        return len(self.models)

    @property
    def chosen_cost(self) -> torch.Tensor:
        """Predicted cost of the chosen model, shape `(batch,)`."""
        return self.cost.gather(1, self.model_indices[:, None]).squeeze(1)

    @property
    def chosen_quality(self) -> torch.Tensor:
        """Predicted quality of the chosen model, shape `(batch,)`."""
        return self.quality.gather(1, self.model_indices[:, None]).squeeze(1)

    def to_records(self) -> list[dict]:
        """One plain dict per prompt (JSON-serialisable)."""
        records = []
        for row, chosen in enumerate(self.models):
            support = float(self.support[row])
            records.append(
                {
                    "model": chosen,
                    "truncated": self.truncated[row],
                    "over_budget": self.over_budget[row],
                    "over_latency": self.over_latency[row],
                    "fallback_embedding": bool(self.fallback_embedding[row]) if self.fallback_embedding else False,
                    "input_tokens": int(self.input_tokens[row]),
                    "support": None if math.isnan(support) else support,
                    "in_distribution": self.in_distribution[row],
                    "ood_policy": self.ood_policy,
                    "ood_applied": self.ood_applied[row],
                    "predictions": {
                        name: {
                            "quality": float(self.quality[row, col]),
                            "quality_low": float(self.quality_low[row, col]),
                            "quality_high": float(self.quality_high[row, col]),
                            "output_tokens": float(self.output_tokens[row, col]),
                            "cost": float(self.cost[row, col]),
                            "latency_s": _finite_or_none(float(self.latency[row, col])),
                        }
                        for col, name in enumerate(self.candidate_models)
                    },
                }
            )
        return records

def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


def predicted_cost(
    input_tokens: torch.Tensor,
    output_tokens: torch.Tensor,
    input_price_per_million: torch.Tensor,
    output_price_per_million: torch.Tensor,
    cached_input_tokens: torch.Tensor | None = None,
    cached_price_per_million: torch.Tensor | None = None,
) -> torch.Tensor:
    """
    Dollars per prompt and candidate: `input_tokens (batch,)`, `output_tokens (batch, n_models)`,
    prices `(n_models,)` → `(batch, n_models)`.

    `cached_input_tokens (batch, n_models)`: how many of each prompt's input tokens a candidate's
    upstream already holds in its prompt cache (the earlier turns of a conversation it answered);
    they are charged `cached_price_per_million (n_models,)` instead of the input price, and never
    more tokens than the prompt has.
    """
    input_cost = input_tokens[:, None] * input_price_per_million[None, :]
    if cached_input_tokens is not None:
        cached = torch.minimum(cached_input_tokens.to(input_cost.dtype).clamp(min=0), input_tokens[:, None].to(input_cost.dtype))
        input_cost = input_cost + cached * (cached_price_per_million - input_price_per_million)[None, :]
    return (input_cost + output_tokens * output_price_per_million[None, :]) / DOLLARS_PER_MILLION


def predicted_latency(output_tokens: torch.Tensor, ttft_s: torch.Tensor, tokens_per_s: torch.Tensor) -> torch.Tensor:
    """
    Seconds to a whole answer: `ttft_s + output_tokens / tokens_per_s`, with `output_tokens
    (batch, n_models)` and the profile `(n_models,)` each → `(batch, n_models)` float64 (NaN where
    the profile is unknown).
    """
    return ttft_s[None, :] + output_tokens.double() / tokens_per_s[None, :]


def latency_mask(
    latency: torch.Tensor, max_latency_s: float, allowed_mask: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """
    The candidates each prompt may use under a latency bound: `(mask (batch, n_models) bool,
    over_latency (batch,) bool)`. A candidate fits when its predicted latency is at most
    `max_latency_s`, or unknown (no profile: nothing to hold against it). Where no allowed candidate
    fits, the fastest allowed one is the only choice left and the prompt is flagged `over_latency`.
    """
    batch, n_models = latency.shape
    allowed = torch.ones(n_models, dtype=torch.bool) if allowed_mask is None else allowed_mask
    allowed = allowed.expand(batch, n_models)
    fits = allowed & ((latency <= max_latency_s) | torch.isnan(latency))
    over_latency = ~fits.any(dim=1)
    fastest = torch.nan_to_num(latency, nan=math.inf).masked_fill(~allowed, math.inf).argmin(dim=1)
    fallback = F.one_hot(fastest, n_models).bool()
    return torch.where(over_latency[:, None], fallback, fits), over_latency


def carrot_utility(quality: torch.Tensor, cost: torch.Tensor, mu, cost_scale: float) -> torch.Tensor:
    """
    CARROT's objective (1 − μ)·quality − μ·cost / cost_scale, in float32.

    `quality`, `cost`: `(batch, n_models)`; `mu`: a float, or a tensor of shape `(n_mu,)` for a sweep,
    in which case the result is `(n_mu, batch, n_models)`.
    """
    # Written as quality − μ·(quality + cost / cost_scale): one fused multiply-add per μ, and the
    # same arithmetic for a single μ and for a sweep, so both give bit-identical utilities.
    # The cost term is divided in float64 and capped at float32's largest number: an astronomical
    # cost is then the worst finite penalty instead of inf, and μ = 0 never meets 0·inf = NaN.
    quality = quality.float()
    largest = torch.finfo(torch.float32).max
    penalty = quality + (cost.double() / cost_scale).clamp(max=largest).float()
    mu = torch.as_tensor(mu, dtype=torch.float32, device=quality.device)
    if mu.ndim == 1:
        mu = mu[:, None, None]
    return torch.addcmul(quality, mu, penalty, value=-1)


def choose_candidates(
    quality: torch.Tensor,
    cost: torch.Tensor,
    mu,
    cost_scale: float,
    allowed_mask: torch.Tensor | None = None,
    max_cost: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """
    The decision rule with its constraints.

    Args:
        quality, cost: `(batch, n_models)`.
        mu: a float, or a `(n_mu,)` tensor to decide for many μ at once (no re-encoding).
        allowed_mask: `(n_models,)` bool, candidates that may be chosen (or `(batch, n_models)`, per prompt).
        max_cost: candidates whose predicted cost exceeds it are excluded; when none fits a prompt,
            its cheapest allowed candidate is chosen.

    Returns:
        `(indices, utility, over_budget)`: indices `(batch,)` or `(n_mu, batch)`, utility of the same
        leading shape plus `n_models` (`-inf` where excluded), over_budget `(batch,)` bool.
    """
    n_models = quality.shape[-1]
    over_budget = torch.zeros(cost.shape[0], dtype=torch.bool, device=cost.device)
    feasible = None  # None: every candidate may be chosen (the masks are skipped, a per-prompt saving)
    if allowed_mask is not None or max_cost is not None:
        if allowed_mask is None:
            allowed_mask = torch.ones(n_models, dtype=torch.bool, device=quality.device)
        feasible = allowed_mask.expand_as(cost)
        if max_cost is not None:
            within = feasible & (cost <= max_cost)
            over_budget = ~within.any(dim=1)
            cheapest = cost.masked_fill(~feasible, math.inf).argmin(dim=1)
            fallback = F.one_hot(cheapest, n_models).bool()
            feasible = torch.where(over_budget[:, None], fallback, within)
    utility = carrot_utility(quality, cost, mu, cost_scale)
    if torch.isnan(utility).any():  # argmax would pick the NaN column: never decide on it
        row = int(torch.isnan(utility).flatten(0, -2).any(-1).nonzero()[0]) % cost.shape[0]
        raise ValueError(
            f"The predictions for prompt {row} are not numbers (quality {quality[row].tolist()}, cost "
            f"{cost[row].tolist()}): the router's weights or the predictions passed in are corrupted."
        )
    if feasible is not None:
        utility = utility.masked_fill(~feasible, -math.inf)
    return utility.argmax(dim=-1), utility, over_budget
