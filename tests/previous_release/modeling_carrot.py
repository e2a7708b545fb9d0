"""CARROT router: a sentence encoder plus per-candidate predictions of quality and output tokens,
and the cost-aware decision rule that turns them into a choice of LLM.

This file travels to the Hub next to `configuration_carrot.py` as remote code: it imports only
torch, numpy, transformers, the standard library and its sibling (relative import).
"""

import array
import itertools
import json
import math
import os
import re
import sys
import threading
import unicodedata
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn import functional as F
from transformers import AutoConfig, AutoModel, AutoTokenizer, PreTrainedModel
from transformers.utils import ModelOutput
from transformers.utils import logging as transformers_logging
from transformers.utils.logging import tqdm

from .configuration_carrot import (
    DEFAULT_MAX_REMEMBERED_ROWS,
    CarrotConfig,
    check_mu,
    check_ood_policy,
    check_number,
    check_positive_int,
    check_price,
)

DOLLARS_PER_MILLION = 1e6
# Prompts are tokenized this many at a time: the tokenizer's output for a whole list of long
# prompts takes gigabytes (50,000 prompts of 400 words: ~4 GB), one chunk only a few hundred MB.
TOKENIZE_CHUNK_PROMPTS = 1024
PIPELINE_SWITCH_INTERVAL_S = 0.0005  # GIL hand-over while a static router tokenizes and predicts at once
# A static router's token ids travel as `array.array` of C ints (4 bytes), not lists of Python ints.
TOKEN_ID_TYPE = "i"
_TOKEN_ID_BYTES = array.array(TOKEN_ID_TYPE).itemsize
_TOKEN_ID_DTYPE = {4: torch.int32, 8: torch.int64}[_TOKEN_ID_BYTES]

# A prompt is counted as at least one input token per this many UTF-8 bytes. The encoder's
# tokenizer collapses some text (a word longer than 100 characters becomes one [UNK]; zero-width
# and control characters are dropped) that the candidate LLMs still charge for, so its count alone
# could be gamed. Ordinary text never reaches the bound: RouterBench prompts average 4.3 bytes per
# WordPiece token and the densest has 6.6, so their counts stay the tokenizer's exact ones.
MAX_BYTES_PER_TOKEN = 8
# Characters that carry no content: whitespace, separators, control and format (zero-width) ones.
_NO_CONTENT_CATEGORIES = frozenset({"Cc", "Cf", "Zs", "Zl", "Zp"})
logger = transformers_logging.get_logger(__name__)


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

    def __post_init__(self):
        n = len(self.models)
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
                        }
                        for col, name in enumerate(self.candidate_models)
                    },
                }
            )
        return records


def mean_pool(last_hidden_state: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean of the token states over real tokens: `(batch, seq, hidden)` → `(batch, hidden)`."""
    mask = attention_mask.unsqueeze(-1).to(last_hidden_state.dtype)
    return (last_hidden_state * mask).sum(1) / mask.sum(1).clamp(min=1e-9)


def predicted_cost(
    input_tokens: torch.Tensor,
    output_tokens: torch.Tensor,
    input_price_per_million: torch.Tensor,
    output_price_per_million: torch.Tensor,
) -> torch.Tensor:
    """
    Dollars per prompt and candidate: `input_tokens (batch,)`, `output_tokens (batch, n_models)`,
    prices `(n_models,)` → `(batch, n_models)`.
    """
    return (
        input_tokens[:, None] * input_price_per_million[None, :]
        + output_tokens * output_price_per_million[None, :]
    ) / DOLLARS_PER_MILLION


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
        allowed_mask: `(n_models,)` bool, candidates that may be chosen.
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
        feasible = allowed_mask[None, :].expand_as(cost)
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


class CarrotMLPHeads(nn.Module):
    """Two small MLPs on the prompt embedding: quality logits and log(1 + output tokens) per candidate."""

    def __init__(self, config: CarrotConfig, embedding_size: int):
        super().__init__()
        n_models, hidden = config.num_candidates, config.head_hidden_size
        self.quality = nn.Sequential(
            nn.Linear(embedding_size, hidden), nn.GELU(), nn.Dropout(config.head_dropout), nn.Linear(hidden, n_models)
        )
        self.log_output_tokens = nn.Sequential(
            nn.Linear(embedding_size, hidden), nn.GELU(), nn.Dropout(config.head_dropout), nn.Linear(hidden, n_models)
        )

    def forward(self, embeddings: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`(batch, hidden)` → quality logits `(batch, n_models)`, log1p(tokens) `(batch, n_models)`."""
        return self.quality(embeddings), self.log_output_tokens(embeddings)


def _check_finite_rows(embeddings: torch.Tensor, quality: torch.Tensor, output_tokens: torch.Tensor) -> None:
    """Raise `ValueError` before NaN or infinite values enter a kNN memory (NaN cells mean "not observed")."""
    if not bool(torch.isfinite(embeddings).all()):
        raise ValueError("The kNN memory's embeddings hold NaN or infinite values; encode the prompts again.")
    for name, values in (("quality", quality), ("output_tokens", output_tokens)):
        if bool(torch.isinf(values).any()):
            raise ValueError(f"The kNN memory's {name} hold infinite values; a missing cell is NaN, not inf.")


class CarrotKNNMemory(nn.Module):
    """
    CARROT-KNN: the training prompts' embeddings with their per-candidate scores and output tokens,
    stored as buffers (so they live in `model.safetensors`). A prompt's prediction for candidate m
    is the mean over its k nearest training prompts (cosine) *among those where m's cell is
    observed*, so that missing cells never count as zeros and a candidate added later with a few
    hundred prompts leaves the other candidates' predictions untouched.
    """

    def __init__(self, config: CarrotConfig, embedding_size: int):
        super().__init__()
        n_memory, n_models = config.knn_memory_size, config.num_candidates
        self.k = config.knn_k
        self._rows_lock = threading.Lock()
        self.register_buffer("embeddings", torch.zeros(n_memory, embedding_size))
        self.register_buffer("quality", torch.zeros(n_memory, n_models))
        self.register_buffer("quality_observed", torch.zeros(n_memory, n_models))
        self.register_buffer("log_output_tokens", torch.zeros(n_memory, n_models))
        self.register_buffer("output_tokens_observed", torch.zeros(n_memory, n_models))

    @torch.no_grad()
    def fill(self, embeddings: torch.Tensor, quality: torch.Tensor, output_tokens: torch.Tensor) -> None:
        """
        Store the memory. `embeddings (n, hidden)` L2-normalised; `quality`, `output_tokens`
        `(n, n_models)` with NaN for missing cells (infinities are refused).
        """
        _check_finite_rows(embeddings, quality, output_tokens)
        self._set_rows(
            embeddings.detach().float().clone(),
            torch.nan_to_num(quality.float(), nan=0.0),
            (~torch.isnan(quality)).float(),
            torch.log1p(torch.nan_to_num(output_tokens.float(), nan=0.0).clamp(min=0)),
            (~torch.isnan(output_tokens)).float(),
        )

    def _set_rows(self, embeddings, quality, quality_observed, log_output_tokens, output_tokens_observed) -> None:
        # All five buffers change together under the lock, and `forward` reads them together under it,
        # so a prediction made while `remember()` grows the memory sees either the old or the new rows.
        with self._rows_lock:
            self.embeddings = embeddings
            self.quality = quality
            self.quality_observed = quality_observed
            self.log_output_tokens = log_output_tokens
            self.output_tokens_observed = output_tokens_observed

    def _rows(self) -> tuple[torch.Tensor, ...]:
        with self._rows_lock:
            return (self.embeddings, self.quality, self.quality_observed, self.log_output_tokens, self.output_tokens_observed)

    @torch.no_grad()
    def append(
        self,
        embeddings: torch.Tensor,
        quality: torch.Tensor,
        output_tokens: torch.Tensor,
        n_remembered: int,
        cap: int,
    ) -> tuple[int, int]:
        """
        Add rows after the existing ones and evict down to `cap` rows.

        Args:
            embeddings: `(n_new, hidden)` L2-normalised.
            quality, output_tokens: `(n_new, n_models)`, NaN where the cell is not observed.
            n_remembered: how many existing rows (the last ones) were remembered rather than trained on.
            cap: the most rows to keep.

        Eviction when over `cap`: remembered rows go first, oldest first (earlier remembered rows,
        then the oldest of the new ones). Training rows go only when the cap is below their number:
        then the oldest training rows make room for the new rows.

        Returns:
            `(n_remembered, n_evicted)` after the change: the new rows count as remembered.
        """
        _check_finite_rows(embeddings, quality, output_tokens)
        old = self._rows()
        device = old[0].device
        n_old = old[0].shape[0]
        n_training, n_new = n_old - n_remembered, embeddings.shape[0]
        excess = max(0, n_old + n_new - cap)
        drop_remembered = min(excess, n_remembered)
        rest = excess - drop_remembered
        if cap >= n_training:  # training rows stay; the oldest of the new rows go
            drop_training, drop_new = 0, rest
        else:  # the cap is below the training rows: the oldest of them make room for what was just learned
            drop_training = min(rest, n_training)
            drop_new = rest - drop_training
        kept_old = torch.cat(
            [torch.arange(drop_training, n_training), torch.arange(n_training + drop_remembered, n_old)]
        ).to(device)
        new = (
            embeddings.float(),
            torch.nan_to_num(quality.float(), nan=0.0),
            (~torch.isnan(quality)).float(),
            torch.log1p(torch.nan_to_num(output_tokens.float(), nan=0.0).clamp(min=0)),
            (~torch.isnan(output_tokens)).float(),
        )
        rows = [
            torch.cat([current[kept_old], added[drop_new:].to(current.device, current.dtype)], 0).contiguous()
            for current, added in zip(old, new)
        ]
        self._set_rows(*rows)
        return n_remembered - drop_remembered + n_new - drop_new, excess

    def forward(self, embeddings: torch.Tensor, k: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """`(batch, hidden)` → quality `(batch, n_models)`, log1p(tokens) `(batch, n_models)`."""
        quality, log_tokens, _ = self.predict_with_similarity(embeddings, k)
        return quality, log_tokens

    def predict_with_similarity(
        self, embeddings: torch.Tensor, k: int | None = None, similarity_k: int = 0
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """
        `(batch, hidden)` → quality `(batch, n_models)`, log1p(tokens) `(batch, n_models)`, and, with
        `similarity_k`, the mean cosine similarity of the `similarity_k` nearest rows `(batch,)` (what
        support needs), all from one similarity product and one top-k search.

        Candidate m's k nearest observed rows are among the k + u_m nearest rows overall, u_m being
        its number of unobserved rows, so one search of depth k + max(u_m) serves every candidate.
        """
        rows = self._rows()
        memory = rows[0]
        targets, unobserved = self._stacked_targets(*rows[1:])
        n_memory, n_models = memory.shape[0], targets.shape[1] // 4
        k = max(1, min(k or self.k, n_memory))
        depth = min(n_memory, max(k + unobserved, similarity_k))
        similarity = embeddings.to(memory.dtype) @ memory.T  # (batch, n_memory)
        values, nearest, rest = self._nearest_rows(similarity, k, depth)
        del similarity  # the neighbour mean builds a tensor of the same size
        top_similarity = None
        if similarity_k:
            top_similarity = mean_of_largest(values, min(similarity_k, depth))
        means = self._neighbour_mean(nearest, rest, targets)  # (batch, 2 * n_models)
        return means[:, :n_models], means[:, n_models:], top_similarity

    @staticmethod
    def _nearest_rows(similarity: torch.Tensor, k: int, depth: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """
        `similarity (batch, n_memory)` → the `depth` largest similarities `(batch, depth)` and
        their row indices `(batch, depth)`, both in no order, and of those the `depth - k` rows
        outside the k nearest `(batch, depth - k)`, most similar first. Only the short tail is
        sorted: a sorted search of the whole depth costs a third more.
        """
        values, nearest = similarity.topk(depth, dim=1, sorted=False)
        tail = values.topk(depth - k, dim=1, largest=False).indices.flip(1)  # positions, most similar first
        return values, nearest, nearest.gather(1, tail)

    def _stacked_targets(self, quality, quality_observed, log_output_tokens, output_tokens_observed):
        """
        `(targets, most_unobserved)`: quality and log-tokens side by side (0 where unobserved), then
        their 0/1 masks, `(n_memory, 4 * n_models)` float32 (one neighbour search serves all), and the
        most unobserved rows of any column; cached until one of the four buffers changes (in place
        or replaced).
        """
        buffers = (quality, quality_observed, log_output_tokens, output_tokens_observed)
        key = tuple((id(tensor), tensor._version) for tensor in buffers)
        cached = getattr(self, "_stacked_cache", None)
        if cached is None or cached[0] != key:
            values = torch.cat([quality, log_output_tokens], 1)
            observed = torch.cat([quality_observed, output_tokens_observed], 1)
            cached = self._stacked_cache = (key, self._stack_targets(values, observed))
        return cached[1]

    @staticmethod
    def _stack_targets(values: torch.Tensor, observed: torch.Tensor) -> tuple[torch.Tensor, int]:
        """`values` and 0/1 `observed (n_memory, n)` → `[values · observed, observed]` `(n_memory, 2n)` float32, and the most unobserved rows of any column."""
        observed = observed.float()
        return torch.cat([values.float() * observed, observed], 1), int((observed == 0).sum(0).max())

    @staticmethod
    def observed_neighbour_mean(similarity: torch.Tensor, values: torch.Tensor, observed: torch.Tensor, k: int) -> torch.Tensor:
        """Per candidate, mean of `values (n_memory, n_models)` over the k most similar observed rows; `similarity (batch, n_memory)`."""
        n_memory = values.shape[0]
        k = max(1, min(k, n_memory))
        targets, unobserved = CarrotKNNMemory._stack_targets(values, observed)
        _, nearest, rest = CarrotKNNMemory._nearest_rows(similarity, k, min(n_memory, k + unobserved))
        return CarrotKNNMemory._neighbour_mean(nearest, rest, targets)

    @staticmethod
    def _neighbour_mean(nearest: torch.Tensor, rest: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """
        Per column, the mean of values over the k nearest rows where the column is observed:
        `nearest (batch, depth)` holds those k rows and the next `rest (batch, depth - k)` rows (most
        similar first); `targets (n_memory, 2 * n)` holds the values (0 where unobserved), then
        their 0/1 observed masks → `(batch, n)`.

        The k nearest rows' sums and observed counts come from one product of their 0/1 indicator
        `(batch, n_memory)` with `targets` (a gather of `(batch, k, n)` costs ten times more); a
        column missing c of those rows takes its next c observed rows, in order, from `rest`, which
        is deep enough for every column's unobserved rows.
        """
        n_columns = targets.shape[1] // 2
        k = nearest.shape[1] - rest.shape[1]
        indicator = torch.zeros(nearest.shape[0], targets.shape[0], dtype=targets.dtype, device=targets.device)
        indicator.scatter_(1, nearest, 1.0)
        if rest.shape[1]:
            indicator.scatter_(1, rest, 0.0)
        totals = indicator @ targets  # (batch, 2 * n): sums, then counts (exact integers)
        sums, counts = totals[:, :n_columns], totals[:, n_columns:]
        if rest.shape[1]:
            rest_targets = targets[rest]  # (batch, depth - k, 2 * n)
            rest_observed = rest_targets[..., n_columns:]
            taken = rest_observed * (rest_observed.cumsum(1) <= (k - counts)[:, None, :])
            sums = sums + (rest_targets[..., :n_columns] * taken).sum(1)
            counts = counts + taken.sum(1)
        return sums / counts.clamp(min=1)


def mean_of_largest(similarity: torch.Tensor, k: int) -> torch.Tensor:
    """The mean of the `k` largest values of each row of `similarity (batch, n)` → `(batch,)`."""
    return similarity.amax(1) if k == 1 else similarity.topk(k, dim=1).values.mean(1)  # amax: a third of topk's time


def top_k_mean_similarity(
    embeddings: torch.Tensor, memory: torch.Tensor, k: int, exclude_self: bool = False, chunk_size: int = 1024
) -> torch.Tensor:
    """
    Mean cosine similarity of each row of `embeddings (n, hidden)` to its `k` most similar rows of
    `memory (n_memory, hidden)` (both L2-normalised) → `(n,)`. With `exclude_self`, `embeddings` is
    `memory` itself and each row leaves itself out (its leave-one-out similarity).
    """
    n_memory = memory.shape[0]
    k = max(1, min(int(k), n_memory - (1 if exclude_self else 0)))
    out = torch.empty(embeddings.shape[0], dtype=torch.float32)
    for start in range(0, embeddings.shape[0], chunk_size):
        chunk = embeddings[start : start + chunk_size].to(memory.dtype)
        similarity = chunk @ memory.T
        if exclude_self:
            rows = torch.arange(chunk.shape[0])
            similarity[rows, rows + start] = -math.inf
        out[start : start + chunk.shape[0]] = mean_of_largest(similarity, k).float().cpu()
    return out


def interpolate_monotone(values: torch.Tensor, knots_x: torch.Tensor, knots_y: torch.Tensor) -> torch.Tensor:
    """
    Per-column piecewise-linear map: `values (batch, n_models)`, knots `(n_models, n_knots)` sorted
    along the last axis → `(batch, n_models)`; flat beyond the first and last knots.
    """
    x = values.T.contiguous().to(knots_x.dtype)  # (n_models, batch)
    n_knots = knots_x.shape[1]
    right = torch.searchsorted(knots_x, x).clamp(1, n_knots - 1)
    x0, x1 = knots_x.gather(1, right - 1), knots_x.gather(1, right)
    y0, y1 = knots_y.gather(1, right - 1), knots_y.gather(1, right)
    width = x1 - x0
    t = torch.where(width > 0, (x - x0) / width.clamp(min=1e-12), torch.ones_like(x)).clamp(0, 1)
    return (y0 + t * (y1 - y0)).T


class CarrotReliability(nn.Module):
    """
    What the router knows about how far to trust its own predictions.

    **Support.** A prompt's similarity to the training prompts is the mean cosine similarity of its
    `support_k` most similar training prompts (the kNN memory, or `support_embeddings` for routers
    without one). Its support is the fraction of the training prompts whose own leave-one-out
    similarity (to the other training prompts) is at most that: 0.02 = less similar to the training
    data than 98% of the training prompts are to each other. For prompts like the training ones it
    is about uniform on [0, 1]; a prompt is in distribution when it is above `support_threshold`.
    The reference distribution is stored, so support stays defined when a kNN memory grows.

    **Calibrated, support-aware quality.** Per candidate, a monotone piecewise-linear map
    (`calibration_x` → `calibration_y`, fitted on out-of-fold predictions at training time) turns the
    predictor's quality into a calibrated one. Out of distribution the prediction is not to be
    trusted, so it moves toward the candidate's prior quality (its mean score on the training
    data): with t = min(1, support / threshold), quality = prior + w · (calibrated − prior) and
    w = (1 − λ) · (floor + (1 − floor) · t). The floor is chosen at training time on prompts of
    tasks held out of the training data (see `carrot_hub.reliability`). λ (`config.prior_shrink`)
    moves predictions toward the prior in distribution too (support ≥ threshold: w = 1 − λ): a
    per-prompt prediction is a noisy estimate, and routing at small μ picks the candidate whose
    noise is highest; λ is chosen by out-of-fold routing AIQ on the training data (0 = none).
    The band `[quality_low, quality_high]` is quality ± (t · spread_in + (1 − t) · spread_out):
    `spread_in` is the out-of-fold calibration error in distribution, `spread_out` how far a
    held-out task's mean quality fell from the prior; it widens as support falls whatever the floor.

    **A cautious estimate out of distribution.** Held out of the training data, a task's mean
    quality lands anywhere within about ± `spread_out` of the prior (its difficulty is not in data
    from other tasks), and routing picks the candidate whose estimate is highest, so a central
    estimate over-states the chosen model's quality on the harder tasks by the full difference.
    With `pessimism` p (config `ood_pessimism`) the quality used and reported is lowered by
    p · (1 − min(1, support / s_p)) · spread_out, s_p = `ood_pessimism_support`: at support 0 and
    p = 1 it is the band's lower end; from s_p up nothing moves. The band stays centred on the
    central estimate.

    Buffers:
        reference (`(n_reference,)`): sorted leave-one-out similarities (or their quantiles).
        support_embeddings (`(n_support, hidden)`): only for routers without a kNN memory.
        calibration_x, calibration_y (`(n_models, n_knots)`): the calibration maps' knots.
        prior (`(n_models,)`): each candidate's mean training score.
        spread_in, spread_out (`(n_models,)`): half-widths of the band in and out of distribution.
    """

    def __init__(self, config: CarrotConfig, embedding_size: int):
        super().__init__()
        n_models, n_knots = config.num_candidates, max(config.calibration_knots, 2)
        self.register_buffer("reference", torch.zeros(config.support_reference_size))
        if config.support_memory_size > 0:
            self.register_buffer("support_embeddings", torch.zeros(config.support_memory_size, embedding_size))
        else:
            self.support_embeddings = None
        self.register_buffer("calibration_x", torch.linspace(0, 1, n_knots).repeat(n_models, 1))
        self.register_buffer("calibration_y", torch.linspace(0, 1, n_knots).repeat(n_models, 1))
        self.register_buffer("prior", torch.full((n_models,), 0.5))
        self.register_buffer("spread_in", torch.zeros(n_models))
        self.register_buffer("spread_out", torch.zeros(n_models))

    def support(self, embeddings: torch.Tensor, memory: torch.Tensor, k: int) -> torch.Tensor:
        """`(batch, hidden)` embeddings and the training prompts' `(n, hidden)` → support `(batch,)` in [0, 1]."""
        return self.support_from_similarity(top_k_mean_similarity(embeddings, memory, k))

    def support_from_similarity(self, similarity: torch.Tensor) -> torch.Tensor:
        """Mean similarity to the nearest training prompts `(batch,)` → support `(batch,)` in [0, 1]."""
        similarity = similarity.to(self.reference.device, self.reference.dtype)
        below = torch.searchsorted(self.reference, similarity.contiguous(), right=True)
        return below.float() / self.reference.shape[0]

    def adjust(
        self,
        quality: torch.Tensor,
        support: torch.Tensor,
        threshold: float,
        floor: float,
        prior_shrink: float = 0.0,
        pessimism: float = 0.0,
        pessimism_support: float = 1.0,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """
        Raw predicted quality `(batch, n_models)` and support `(batch,)` → calibrated quality moved
        toward the prior by `prior_shrink` and further as support falls (and, with `pessimism`, down
        the band), and its band: three `(batch, n_models)` tensors.
        """
        calibrated = interpolate_monotone(quality.float(), self.calibration_x, self.calibration_y)
        trust = support.float().clamp(0, 1) / threshold if threshold > 0 else torch.ones_like(support.float())
        trust = trust.clamp(max=1.0)[:, None]  # (batch, 1): 0 at support 0, 1 from the threshold up
        weight = (1.0 - prior_shrink) * (floor + (1.0 - floor) * trust)
        adjusted = torch.where(
            weight >= 1.0, calibrated, self.prior[None, :] + weight * (calibrated - self.prior[None, :])
        )
        half_width = trust * self.spread_in[None, :] + (1.0 - trust) * self.spread_out[None, :]
        low, high = (adjusted - half_width).clamp(0, 1), (adjusted + half_width).clamp(0, 1)
        if pessimism > 0:
            caution = 1.0 - (support.float().clamp(0, 1) / pessimism_support).clamp(max=1.0)[:, None]
            adjusted = (adjusted - pessimism * caution * self.spread_out[None, :]).clamp(0, 1)
        return adjusted, low, high


_WORD_BOUNDARY = re.compile(r"[ \t\n\r]+")  # where BERT's normalizer and pre-tokenizer always split
# ASCII control characters BERT's `clean_text` drops (tab, newline and return are whitespace).
_ASCII_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


class _ShortSwitchInterval:
    """
    Python's GIL switch interval at `PIPELINE_SWITCH_INTERVAL_S` while at least one static pipeline
    runs, restored when the last one ends (concurrent route() calls share the process-wide setting).
    The prediction thread needs the GIL back after each torch call while tokenizing holds it; at the
    default 5 ms it waits that long each time (about 10% of the throughput).
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._active = 0
        self._saved = None

    def __enter__(self) -> None:
        with self._lock:
            if self._active == 0:
                self._saved = sys.getswitchinterval()
                sys.setswitchinterval(min(self._saved, PIPELINE_SWITCH_INTERVAL_S))
            self._active += 1

    def __exit__(self, *exc_info) -> None:
        with self._lock:
            self._active -= 1
            if self._active == 0:
                sys.setswitchinterval(self._saved)


_SHORT_SWITCH_INTERVAL = _ShortSwitchInterval()


class CachedWordPieceTokenizer:
    """
    The same token ids as a lowercasing BERT WordPiece tokenizer (`tokenizers` backend), found faster.

    For ASCII text BERT's normalizer only lowercases and its pre-tokenizer splits at spaces, tabs
    and newlines first (then between letters/digits and punctuation, within each piece). So a
    prompt's ids are the concatenation of the ids of its whitespace-separated chunks, each
    tokenized on its own, and a chunk's ids can be cached: `str.split` and one dictionary lookup
    per chunk replace the tokenizer's per-character work (RouterBench's prompts tokenize about ten
    times as fast as with the backend; caching words instead of chunks ran at half that speed).
    A chunk's ids are kept packed as C ints (`bytes`), so a prompt's ids are one `bytes.join` of
    its chunks' ([`packed`]): no Python int per token is made, and a batch's ids reach torch as one
    buffer (building and flattening lists of ints took a third of the tokenizing time).
    Chunks not yet cached are tokenized by the backend, in one
    batch. Text with non-ASCII or control characters is split at spaces, tabs and newlines only and
    its chunks are cached as written; prompts containing an added token's text go through the
    backend whole. So every prompt gets exactly the backend's ids. [`count`] counts a text's ids
    without building them, line by line, caching each line's count. The caches hold at most
    `max_chunks` chunks of at most `max_chunk_chars` characters (a prompt with a longer chunk goes to
    the backend whole) and `max_lines` lines of at most `max_line_chars` (longer ones are counted
    each time); a full cache is emptied.
    """

    def __init__(
        self,
        backend,
        added_tokens: Sequence[str],
        max_chunks: int = 100_000,
        max_chunk_chars: int = 200,
        max_lines: int = 20_000,
        max_line_chars: int = 1_000,
    ):
        self.backend = backend
        self.max_chunk_chars, self.max_lines, self.max_line_chars = max_chunk_chars, max_lines, max_line_chars
        # One search for all added tokens: an added token's text anywhere sends the prompt to the backend.
        added = [re.escape(token.lower()) for token in added_tokens if token]
        self._added_token = re.compile("|".join(added)) if added else None
        self.max_chunks = max_chunks
        self._chunk_ids: dict[str, bytes] = {}  # chunk → its ids, packed as `array(TOKEN_ID_TYPE)`
        self._line_lengths: dict[str, int] = {}  # `count`'s cache, cleared as the chunks' is

    @classmethod
    def for_tokenizer(cls, tokenizer) -> "CachedWordPieceTokenizer | None":
        """The fast path for `tokenizer`, or None when it is not a lowercasing BERT WordPiece tokenizer."""
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is None:
            return None
        try:
            spec = json.loads(backend.to_str())
        except Exception:
            return None
        normalizer, pre_tokenizer, model = (spec.get(key) or {} for key in ("normalizer", "pre_tokenizer", "model"))
        is_bert_wordpiece = (
            normalizer.get("type") == "BertNormalizer"
            and normalizer.get("lowercase") is True
            and pre_tokenizer.get("type") == "BertPreTokenizer"
            and model.get("type") == "WordPiece"
        )
        if not is_bert_wordpiece:
            return None
        return cls(backend, [token.get("content", "") for token in spec.get("added_tokens") or []])

    def _chunks(self, prompt: str) -> list[str] | None:
        """The prompt's chunks as cache keys, or None when it must go through the backend whole."""
        if prompt.isascii() and not _ASCII_CONTROL.search(prompt):
            lowered = prompt.lower()
            if self._added_token is not None and self._added_token.search(lowered):
                return None
            # Only space, tab, newline and carriage return are left to split at (other ASCII
            # controls, which str.split would also take for whitespace, were excluded above).
            return lowered.split()
        if self._added_token is not None and self._added_token.search(prompt.lower()):
            return None
        # Other text is split only where BERT surely splits, each chunk kept as written: its
        # normalizer (lowercasing, accents, Chinese characters, control characters) works
        # character by character, so the backend gives a chunk alone the ids it gives it in context.
        return [chunk for chunk in _WORD_BOUNDARY.split(prompt) if chunk]

    def __call__(self, prompts: Sequence[str]) -> list[list[int]]:
        """Prompts → their token ids without special tokens, as the backend gives them."""
        return [ids.tolist() for ids in self.packed(prompts)]

    def packed(self, prompts: Sequence[str]) -> list[array.array]:
        """As calling it, each prompt's ids as an `array(TOKEN_ID_TYPE)`, joined from the cache without Python ints."""
        chunks = [self._chunks(prompt) for prompt in prompts]
        ids: list[array.array | None] = [None] * len(prompts)
        join, lookup = b"".join, self._chunk_ids.__getitem__
        unseen = []  # positions of prompts with a chunk not cached yet
        for position, prompt_chunks in enumerate(chunks):
            if prompt_chunks is not None:
                try:
                    ids[position] = array.array(TOKEN_ID_TYPE, join(map(lookup, prompt_chunks)))
                except KeyError:
                    unseen.append(position)
        if unseen:
            # A prompt with a chunk too long to keep (a blob without spaces) goes to the backend whole.
            for position in unseen:
                if max(map(len, chunks[position])) > self.max_chunk_chars:
                    chunks[position] = None
            unseen = [position for position in unseen if chunks[position] is not None]
            self._learn_chunks({chunk for position in unseen for chunk in chunks[position]})
            lookup = self._chunk_ids.__getitem__
            for position in unseen:
                ids[position] = array.array(TOKEN_ID_TYPE, join(map(lookup, chunks[position])))
        slow = [position for position, prompt_chunks in enumerate(chunks) if prompt_chunks is None]
        if slow:
            encodings = self.backend.encode_batch_fast([prompts[i] for i in slow], add_special_tokens=False)
            for position, encoding in zip(slow, encodings):
                ids[position] = array.array(TOKEN_ID_TYPE, encoding.ids)
        return ids

    def count(self, texts: Sequence[str]) -> list[int]:
        """
        Texts → their numbers of token ids, as `len(ids)` of `self(texts)` without building the ids.
        Counted line by line (BERT splits at a newline): the lines a few-shot prompt shares with
        the prompts before it are counted once and looked up after that.
        """
        counts = [0] * len(texts)
        lookup = self._line_lengths.__getitem__
        unseen: dict[str, int] = {}
        pending = []  # (text's position, its lines)
        for position, text in enumerate(texts):
            lines = text.split("\n")
            try:
                counts[position] = sum(map(lookup, lines))
            except KeyError:
                pending.append((position, lines))
                unseen.update((line, 0) for line in lines if line not in self._line_lengths)
        if pending:
            new_counts = dict(zip(unseen, self._count_chunks(list(unseen))))
            if len(self._line_lengths) + len(new_counts) > self.max_lines:
                self._line_lengths = {}
            # Long lines are counted each time: keeping them could hold gigabytes of text.
            self._line_lengths.update((line, n) for line, n in new_counts.items() if len(line) <= self.max_line_chars)
            known = self._line_lengths
            for position, text_lines in pending:
                counts[position] = sum(new_counts[line] if line in new_counts else known[line] for line in text_lines)
        return counts

    def _count_chunks(self, texts: list[str]) -> list[int]:
        """Texts → their numbers of token ids, from their cached chunks' ids."""
        counts = [0] * len(texts)
        lookup = self._chunk_ids.__getitem__
        rest = []  # texts with a chunk not cached yet, or for the backend whole
        for position, text in enumerate(texts):
            try:
                counts[position] = sum(map(len, map(lookup, self._chunks(text)))) // _TOKEN_ID_BYTES
            except (KeyError, TypeError):
                rest.append(position)
        for position, ids in zip(rest, self.packed([texts[i] for i in rest])):
            counts[position] = len(ids)
        return counts

    def _learn_chunks(self, chunks: set[str]) -> None:
        """Cache the ids of `chunks` (the cache starts over when it would pass `max_chunks`)."""
        if len(self._chunk_ids) + len(chunks) > self.max_chunks:
            self._chunk_ids = {}
        missing = [chunk for chunk in chunks if chunk not in self._chunk_ids]
        for chunk, encoding in zip(missing, self.backend.encode_batch_fast(missing, add_special_tokens=False)):
            self._chunk_ids[chunk] = array.array(TOKEN_ID_TYPE, encoding.ids).tobytes()

    def window_ids(
        self, prompts: Sequence[str], tokens: int, from_end: bool = True, skip_id: int | None = None
    ) -> tuple[list[array.array], list[int]]:
        """
        Each prompt's ids (an `array(TOKEN_ID_TYPE)`) for a window of whole words at its end (its
        start, `from_end=False`) holding at least `tokens` ids other than `skip_id`, and the
        prompt's number of token ids.

        A router keeps only its last (or first) `max_prompt_tokens` tokens, so building the ids of a
        long prompt's other end is wasted work. A window starts (ends) at a space, tab or newline:
        BERT splits there whatever comes before (after), so the window's ids are exactly the whole
        prompt's ids at that end. It starts at `WINDOW_CHARS_PER_TOKEN` characters per token and
        grows, by the characters per token it found, until it holds enough ids or is the whole
        prompt. The text outside it is only counted, line by line ([`count`]).
        """
        ids: list[array.array | None] = [None] * len(prompts)
        counts = [0] * len(prompts)
        outside: dict[int, str] = {}  # prompt → its text outside the window
        windows = {i: tokens * self.WINDOW_CHARS_PER_TOKEN for i in range(len(prompts))}  # characters, per prompt still to do
        while windows:
            texts = [self._window(prompts[i], window, from_end) for i, window in windows.items()]
            short = {}
            for (i, window), text, text_ids in zip(windows.items(), texts, self.packed(texts)):
                kept = len(text_ids) - (text_ids.count(skip_id) if skip_id is not None else 0)
                prompt = prompts[i]
                if kept >= tokens or len(text) == len(prompt):
                    ids[i], counts[i] = text_ids, len(text_ids)
                    if len(text) < len(prompt):
                        outside[i] = prompt[: len(prompt) - len(text)] if from_end else prompt[len(text) :]
                else:  # grow it by the characters per token seen so far, with a margin
                    short[i] = int(max(window * 1.5, len(text) * 1.25 * tokens / max(kept, 1)))
            windows = short
        for i, n_outside in zip(outside, self.count(list(outside.values()))):
            counts[i] += n_outside
        return ids, counts

    WINDOW_CHARS_PER_TOKEN = 5  # RouterBench averages ~4.3 characters per token; denser text takes a second pass

    @staticmethod
    def _window(prompt: str, n_chars: int, from_end: bool) -> str:
        """About the last (first) `n_chars` characters of `prompt`, cut at a space or newline; the whole prompt when none."""
        if len(prompt) <= n_chars:
            return prompt
        if from_end:
            start = len(prompt) - n_chars
            cut = prompt.find(" ", start)
            if cut < 0 or cut - start > 200:  # no space near: the first newline, tab or return will do
                match = _WORD_BOUNDARY.search(prompt, start)
                cut = match.start() if match else -1
            return prompt[cut:] if cut >= 0 else prompt
        cut = prompt.rfind(" ", 0, n_chars)
        if cut < n_chars - 200:
            cut = max(prompt.rfind(space, 0, n_chars) for space in " \t\n\r")
        return prompt[:cut] if cut > 0 else prompt


class CarrotStaticEncoder(nn.Module):
    r"""
    A static sentence encoder: one vector per token of the vocabulary, distilled from a sentence
    encoder (model2vec: each token's embedding by the encoder, reduced by PCA and weighted by a
    Zipf estimate of its frequency), averaged over a prompt's tokens and L2-normalised. No attention
    and no positions: a prompt costs one table lookup per token, so the tokenizer is the main cost.

    Buffers and weights (all in `model.safetensors`):
        token_embeddings.weight `(vocab_size, embedding_size)`: the distilled rows, SIF weight
            folded in (model2vec multiplies them at encoding time: the mean is the same).
        fallback `(embedding_size,)`: the embedding given to a prompt with no token of the
            vocabulary (the L2-normalised mean of all rows: the "average token").
    """

    def __init__(self, vocab_size: int, embedding_size: int):
        super().__init__()
        self.token_embeddings = nn.EmbeddingBag(vocab_size, embedding_size, mode="mean")
        self.register_buffer("fallback", torch.zeros(embedding_size))

    @property
    def vocab_size(self) -> int:
        return self.token_embeddings.num_embeddings

    @property
    def embedding_size(self) -> int:
        return self.token_embeddings.embedding_dim

    def embed_bags(
        self, token_ids: torch.Tensor, offsets: torch.Tensor, empty: torch.Tensor | None = None
    ) -> torch.Tensor:
        """
        Prompts as one flat `token_ids (n_tokens,)` tensor and the `offsets (batch,)` where each
        prompt starts → `(batch, embedding_size)` float32 L2-normalised embeddings; a prompt with no
        tokens gets `fallback`. `empty (batch,)` bool, when the caller knows it, saves finding them.
        """
        # The functional form: the module's call costs more than the lookup for a single prompt.
        pooled = F.embedding_bag(token_ids, self.token_embeddings.weight, offsets, mode="mean").float()
        if empty is None:
            empty = torch.diff(offsets, append=offsets.new_tensor([token_ids.numel()])) == 0
        return self._normalise(pooled, empty)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Padded `(batch, seq)` token ids and mask → `(batch, embedding_size)`, as [`embed_bags`]."""
        rows = F.embedding(input_ids, self.token_embeddings.weight).float()
        pooled = mean_pool(rows, attention_mask)
        return self._normalise(pooled, attention_mask.sum(1) == 0)

    def _normalise(self, pooled: torch.Tensor, empty: torch.Tensor | bool) -> torch.Tensor:
        embeddings = F.normalize(pooled, p=2, dim=-1)
        if isinstance(empty, torch.Tensor) and bool(empty.any()):
            embeddings[empty] = self.fallback.float()
        return embeddings


class CarrotPreTrainedModel(PreTrainedModel):
    config_class = CarrotConfig
    base_model_prefix = "carrot"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = False

    @torch.no_grad()
    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            module.weight.normal_(mean=0.0, std=0.02)
            if module.bias is not None:
                module.bias.zero_()
        elif isinstance(module, (nn.Embedding, nn.EmbeddingBag)):
            module.weight.normal_(mean=0.0, std=0.02)
        elif isinstance(module, nn.LayerNorm):
            module.weight.fill_(1.0)
            module.bias.zero_()

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        wants_info = kwargs.pop("output_loading_info", False)
        try:
            model, info = super().from_pretrained(
                pretrained_model_name_or_path, *args, output_loading_info=True, **kwargs
            )
        except Exception as error:
            explained = _explain_load_error(error, pretrained_model_name_or_path, _static_table_mismatch(pretrained_model_name_or_path))
            if explained is error:
                raise
            raise explained from error
        source = str(pretrained_model_name_or_path)
        check_predictor_weights(model, info, source)
        model.check_consistency(source=source)
        if isinstance(model, CarrotRouter):
            model.tokenizer  # a router without its tokenizer fails here, not at the first route()
        if not model.config.has_support:
            logger.warning(
                f"The router at {source} was saved before routers measured support: it routes "
                "as before, with support and in_distribution reported as unknown; retrain it to get them."
            )
        return (model, info) if wants_info else model


def check_predictor_weights(model, loading_info: dict, source: str) -> None:
    """
    Raise `ValueError` when model.safetensors lacks the predictor `config.predictor_kind` names
    (transformers would otherwise initialise it afresh: every prediction the same meaningless value).
    """
    expected = [key for key in model.state_dict() if key.startswith("predictor.")]
    missing = [key for key in loading_info.get("missing_keys", ()) if key.startswith("predictor.")]
    unexpected = [key for key in loading_info.get("unexpected_keys", ()) if key.startswith("predictor.")]
    if not missing or (not unexpected and len(missing) < len(expected)):
        return
    found = {"predictor.embeddings": "knn", "predictor.quality.0.weight": "mlp"}
    saved_kind = next((kind for key, kind in found.items() if key in unexpected), None)
    saved = f"the weights hold a {saved_kind!r} predictor" if saved_kind else "the weights hold no such predictor"
    raise ValueError(
        f"The router at {source}: config.json says predictor_kind={model.config.predictor_kind!r} but "
        f"model.safetensors lacks {missing[0]!r} ({len(missing)} predictor weights missing; {saved}). "
        "Restore the config.json saved with these weights."
    )


def _transformer_encoder(config: CarrotConfig) -> nn.Module:
    """The BERT-family encoder `config.encoder_config` describes, without its pooler (weights unset)."""
    encoder_config = dict(config.encoder_config or {"model_type": "bert"})
    model_type = encoder_config.pop("model_type", "bert")
    # The encoder's own saved dtype is dropped so that it follows `from_pretrained(dtype=...)`.
    for key in ("architectures", "transformers_version", "auto_map", "_name_or_path", "dtype", "torch_dtype"):
        encoder_config.pop(key, None)
    return AutoModel.from_config(AutoConfig.for_model(model_type, **encoder_config), add_pooling_layer=False)


def _static_table_mismatch(source) -> str | None:
    """For a local static router whose saved token table differs from its config: what differs, else None."""
    try:
        config = CarrotConfig.from_pretrained(source)
        if config.encoder_kind != "static":
            return None
        # The safetensors header (8-byte length, then JSON) gives the shape without reading the table.
        with open(os.path.join(source, "model.safetensors"), "rb") as handle:
            header = json.loads(handle.read(int.from_bytes(handle.read(8), "little")))
        shape = tuple(header["encoder.token_embeddings.weight"]["shape"])
    except Exception:
        return None
    expected = (config.static_vocab_size, config.static_embedding_size)
    if shape == expected:
        return None
    return f"model.safetensors holds a {shape[0]} × {shape[1]} token table, config.json says {expected[0]} × {expected[1]}"


def _explain_load_error(error: Exception, source, static_mismatch: str | None = None) -> Exception:
    text = str(error)
    lowered = text.lower()
    if "mismatch" in lowered and static_mismatch:
        return ValueError(
            f"The router at {source} does not match its config.json: its static token table has another shape "
            f"({static_mismatch}). Restore config.json (static_vocab_size, static_embedding_size) or the "
            "weights from the same training run."
        )
    if "mismatch" in lowered:
        return ValueError(
            f"The router at {source} does not match its config.json: the weights were trained for a "
            "different number of candidates (or memory size) than candidate_models and the price table "
            "list. Restore config.json, or add/remove candidates with the tools made for it (`carrot "
            "add-model` / `carrot remove-model`), which update weights and config together."
        )
    if type(error).__name__ == "SafetensorError" or "deserializ" in lowered or "incomplete metadata" in lowered:
        return OSError(
            f"Could not read the weights file model.safetensors of the router at {source}: it is "
            f"corrupted or truncated ({text.splitlines()[0] if text else type(error).__name__}). "
            "Download or save the router again."
        )
    return error


class CarrotRouter(CarrotPreTrainedModel):
    r"""
    A CARROT router: a BERT-family sentence encoder (mean pooled, L2-normalised) and a predictor
    (`config.predictor_kind`: `"mlp"` heads or a `"knn"` memory) giving, for every candidate LLM,
    its expected quality and the number of tokens it will write. [`route`] turns these into a
    choice with CARROT's rule argmax_m (1 − μ)·quality_m − μ·cost_m / cost_scale.

    Example:

    ```python
    >>> from transformers import AutoModel
    >>> router = AutoModel.from_pretrained("path/or/org-router")
    >>> decision = router.route(["Prove that √2 is irrational.", "hi!"], mu=0.3)
    >>> decision.models
    ```
    """

    # `from_pretrained(..., dtype=torch.bfloat16)` halves the encoder; the predictor (kNN memory
    # or heads) stays float32 so that neighbour search and quality estimates keep their precision.
    _keep_in_fp32_modules_strict = ["predictor", "reliability"]

    def __init__(self, config: CarrotConfig):
        super().__init__(config)
        if config.encoder_kind == "static":
            self.encoder = CarrotStaticEncoder(config.static_vocab_size, config.static_embedding_size)
        else:
            self.encoder = _transformer_encoder(config)
        hidden = self.embedding_size
        if config.predictor_kind == "knn":
            self.predictor = CarrotKNNMemory(config, hidden)
        else:
            self.predictor = CarrotMLPHeads(config, hidden)
        # Routers saved before support existed have none: they route as before, support unknown.
        self.reliability = CarrotReliability(config, hidden) if config.has_support else None
        self._tokenizer = None
        self._tokenizer_lock = threading.Lock()
        # (backend tokenizer, its CachedWordPieceTokenizer or None), made on first use.
        self._word_piece_cache = None
        self._remember_lock = threading.Lock()
        self.post_init()

    @property
    def is_static(self) -> bool:
        """Whether the encoder is a static token table (`config.encoder_kind == "static"`)."""
        return self.config.encoder_kind == "static"

    @property
    def embedding_size(self) -> int:
        """Width of the prompt embeddings the encoder gives (and the predictor reads)."""
        if self.is_static:
            return self.encoder.embedding_size
        return self.encoder.config.hidden_size

    # ----------------------------------------------------------------------------------- tensors

    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """`(batch, seq)` token ids → `(batch, hidden)` float32 L2-normalised mean-pooled embeddings."""
        if self.is_static:
            return self.encoder(input_ids, attention_mask)
        hidden_states = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        # Pool in float32 whatever the encoder runs in (bfloat16 runs it about 1.8x faster on CPUs
        # with bf16 units), so the predictor, kept in float32, always sees float32 embeddings.
        return F.normalize(mean_pool(hidden_states.float(), attention_mask), p=2, dim=-1)

    def predict_from_embeddings(self, embeddings: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """
        `(batch, hidden)` embeddings → quality `(batch, n_models)` in [0, 1] and output tokens
        `(batch, n_models)` ≥ 0, without the encoder (for precomputed embeddings). Quality is the
        calibrated, support-aware one that `route()` uses (see [`CarrotReliability`]).
        """
        quality, output_tokens, _, _, _ = self.predict_with_support(embeddings)
        return quality, output_tokens

    def predict_raw(self, embeddings: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The predictor's own quality and output tokens `(batch, n_models)`, before calibration and support."""
        quality, log_tokens = self._raw_predictions(embeddings)
        if self.config.predictor_kind == "mlp":
            quality = torch.sigmoid(quality)
        return quality, self._tokens_from_log(log_tokens)

    def predict_with_support(self, embeddings: torch.Tensor):
        """
        `(batch, hidden)` embeddings → `(quality, output_tokens, support, quality_low, quality_high)`:
        quality, band and tokens `(batch, n_models)`, support `(batch,)` (NaN when the router has no
        support statistics, i.e. was saved before they existed).
        """
        return self._finish_predictions(*self._search_predictions(embeddings))

    def _search_predictions(self, embeddings: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """
        The part of [`predict_with_support`] that reads the embeddings `(batch, hidden)`, in a few
        large torch calls: the predictor's raw quality (logits for MLP heads) and log1p(tokens)
        `(batch, n_models)`, and the mean similarity of the `support_k` nearest training prompts
        `(batch,)` (None for a router without support statistics).
        """
        reliability = self.reliability
        if reliability is None:
            return *self._raw_predictions(embeddings), None
        if reliability.support_embeddings is None and isinstance(self.predictor, CarrotKNNMemory):
            # Support is measured against the kNN memory: one search serves both.
            return self.predictor.predict_with_similarity(embeddings, similarity_k=self.config.support_k)
        quality, log_tokens = self._raw_predictions(embeddings)
        return quality, log_tokens, top_k_mean_similarity(embeddings, self.support_memory, self.config.support_k)

    def _finish_predictions(
        self, quality: torch.Tensor, log_tokens: torch.Tensor, similarity: torch.Tensor | None
    ) -> tuple[torch.Tensor, ...]:
        """
        What [`_search_predictions`] gives → `(quality, output_tokens, support, quality_low,
        quality_high)`: many small element-wise calls, cheap for any batch size.
        """
        if self.config.predictor_kind == "mlp":
            quality = torch.sigmoid(quality)
        output_tokens = self._tokens_from_log(log_tokens)
        if similarity is None:
            support = torch.full((quality.shape[0],), math.nan, device=quality.device)
            return quality, output_tokens, support, quality, quality
        support = self.reliability.support_from_similarity(similarity).to(quality.device)
        quality, low, high = self.reliability.adjust(
            quality, support, self.config.support_threshold, self.config.shrink_floor,
            self.config.prior_shrink, self.config.ood_pessimism, self.config.ood_pessimism_support,
        )
        return quality, output_tokens, support, low, high

    @property
    def support_memory(self) -> torch.Tensor:
        """The training prompts' embeddings `(n, hidden)` support is measured against (a kNN router's memory)."""
        if self.reliability is not None and self.reliability.support_embeddings is not None:
            return self.reliability.support_embeddings
        if isinstance(self.predictor, CarrotKNNMemory):
            return self.predictor.embeddings
        raise ValueError("This router keeps no training-prompt embeddings; call fit_support(embeddings) first.")

    @torch.no_grad()
    def fit_support(
        self,
        embeddings: torch.Tensor | None = None,
        k: int | None = None,
        threshold: float | None = None,
        max_reference: int = 4096,
        max_memory: int = 20000,
        seed: int = 0,
    ) -> torch.Tensor:
        """
        Store what `support` needs: the training prompts' leave-one-out similarities (sorted, or
        `max_reference` quantiles of them). A kNN router measures against its memory; other routers
        keep `embeddings (n, hidden)` of their training prompts (a seeded sample of `max_memory` rows
        when there are more). Calibration already set is kept. Returns the leave-one-out
        similarities `(n,)`.
        """
        if isinstance(self.predictor, CarrotKNNMemory):
            memory, kept = self.predictor.embeddings.float(), 0
        else:
            if embeddings is None:
                raise ValueError("fit_support needs the training prompts' embeddings for a router without a kNN memory.")
            memory = torch.as_tensor(embeddings, dtype=torch.float32).detach().clone()
            if memory.shape[0] > max_memory:
                rows = torch.randperm(memory.shape[0], generator=torch.Generator().manual_seed(seed))[:max_memory]
                memory = memory[rows.sort().values]
            kept = memory.shape[0]
        if memory.shape[0] < 2:
            raise ValueError("Support needs at least two training prompts.")
        k = int(k or self.config.support_k)
        similarity = top_k_mean_similarity(memory, memory, k, exclude_self=True)
        reference = similarity.sort().values
        if reference.shape[0] > max_reference:
            levels = (torch.arange(max_reference, dtype=torch.float64) + 0.5) / max_reference
            reference = torch.quantile(similarity.double(), levels).float()
        previous = self.reliability
        self.config.support_k = k
        self.config.support_reference_size = int(reference.shape[0])
        self.config.support_memory_size = int(kept)
        if threshold is not None:
            self.config.support_threshold = float(threshold)
        self.config.validate_reliability_fields()
        device = self.predictor_device
        self.reliability = CarrotReliability(self.config, memory.shape[1]).to(device)
        self.reliability.reference = reference.to(device)
        if kept:
            self.reliability.support_embeddings = memory.to(device)
        if previous is not None:
            for name in ("calibration_x", "calibration_y", "prior", "spread_in", "spread_out"):
                setattr(self.reliability, name, getattr(previous, name).clone())
        return similarity

    @torch.no_grad()
    def set_calibration(
        self,
        calibration_x: torch.Tensor,
        calibration_y: torch.Tensor,
        prior: torch.Tensor,
        spread_in: torch.Tensor | None = None,
        spread_out: torch.Tensor | None = None,
        method: str = "isotonic",
        shrink_floor: float | None = None,
        prior_shrink: float | None = None,
        ood_pessimism: float | None = None,
        ood_pessimism_support: float | None = None,
    ) -> None:
        """
        Set the per-candidate calibration maps (knots `(n_models, n_knots)`, sorted by x), the prior
        quality `(n_models,)`, the band's half-widths `(n_models,)` and, when given, the shrinkage
        toward the prior at support 0 (`shrink_floor`) and everywhere (`prior_shrink`, λ) (see
        [`CarrotReliability`]). Needs support first ([`fit_support`]).
        """
        if self.reliability is None:
            raise ValueError("Fit support (router.fit_support(...)) before setting the calibration.")
        n_models = self.config.num_candidates
        calibration_x = torch.as_tensor(calibration_x, dtype=torch.float32)
        calibration_y = torch.as_tensor(calibration_y, dtype=torch.float32)
        if calibration_x.shape != calibration_y.shape or calibration_x.ndim != 2 or calibration_x.shape[0] != n_models:
            raise ValueError(f"calibration knots must both be (n_models={n_models}, n_knots) tensors.")
        if calibration_x.shape[1] < 2:
            raise ValueError("A calibration map needs at least two knots.")
        device = self.predictor_device
        zeros = torch.zeros(n_models)
        values = {
            "calibration_x": calibration_x,
            "calibration_y": calibration_y,
            "prior": torch.as_tensor(prior, dtype=torch.float32).reshape(n_models),
            "spread_in": zeros.clone() if spread_in is None else torch.as_tensor(spread_in, dtype=torch.float32).reshape(n_models),
            "spread_out": zeros.clone() if spread_out is None else torch.as_tensor(spread_out, dtype=torch.float32).reshape(n_models),
        }
        for name, value in values.items():
            setattr(self.reliability, name, value.contiguous().to(device))
        self.config.calibration_knots = int(calibration_x.shape[1])
        self.config.calibration_method = method
        if shrink_floor is not None:
            self.config.shrink_floor = float(shrink_floor)
        if prior_shrink is not None:
            self.config.prior_shrink = float(prior_shrink)
        if ood_pessimism is not None:
            self.config.ood_pessimism = float(ood_pessimism)
        if ood_pessimism_support is not None:
            self.config.ood_pessimism_support = float(ood_pessimism_support)
        self.config.validate_reliability_fields()

    @property
    def predictor_device(self) -> torch.device:
        tensors = [*self.predictor.parameters(), *self.predictor.buffers()]
        return tensors[0].device if tensors else torch.device("cpu")

    @property
    def predictor_dtype(self) -> torch.dtype:
        """The dtype of the kNN memory or the heads: float32, even when the encoder runs in bfloat16."""
        return self._predictor_tensor().dtype

    def _predictor_tensor(self) -> torch.Tensor:
        """One tensor of the predictor (its device and dtype are the predictor's)."""
        return next(itertools.chain(self.predictor.parameters(), self.predictor.buffers()))

    def _raw_predictions(self, embeddings):
        return self.predictor(embeddings)

    def _tokens_from_log(self, log_tokens: torch.Tensor) -> torch.Tensor:
        # Clamp before expm1 so an untrained head cannot overflow to inf.
        return torch.expm1(log_tokens.clamp(min=0.0, max=20.0)).clamp(min=self.config.output_tokens_floor)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.LongTensor | None = None,
        embeddings: torch.FloatTensor | None = None,
        quality_labels: torch.FloatTensor | None = None,
        output_token_labels: torch.FloatTensor | None = None,
        **kwargs,
    ) -> CarrotRouterOutput:
        r"""
        Args:
            input_ids, attention_mask (`(batch, seq)`): the tokenized prompts.
            embeddings (`(batch, hidden)`, *optional*): precomputed embeddings instead of `input_ids`.
            quality_labels (`(batch, n_models)`, *optional*): observed scores in [0, 1], NaN where missing.
            output_token_labels (`(batch, n_models)`, *optional*): observed output tokens, NaN where missing.

        The loss is the masked BCE of the quality predictions plus the masked MSE of log(1 + tokens).
        """
        if embeddings is None:
            if input_ids is None:
                raise ValueError("forward() needs input_ids (with attention_mask) or precomputed embeddings.")
            if attention_mask is None:
                attention_mask = torch.ones_like(input_ids)
            embeddings = self.embed(input_ids, attention_mask)
        quality_raw, log_tokens = self._raw_predictions(embeddings)
        is_logits = self.config.predictor_kind == "mlp"
        quality = torch.sigmoid(quality_raw) if is_logits else quality_raw
        loss = None
        if quality_labels is not None or output_token_labels is not None:
            loss = carrot_loss(quality_raw, log_tokens, quality_labels, output_token_labels, is_logits)
        return CarrotRouterOutput(
            loss=loss, quality=quality, output_tokens=self._tokens_from_log(log_tokens), embeddings=embeddings
        )

    # ------------------------------------------------------------------------------- tokenizer

    @property
    def tokenizer(self):
        """The tokenizer saved with the router (loaded on first use from where the router came from)."""
        if self._tokenizer is None:
            with self._tokenizer_lock:
                if self._tokenizer is None:
                    source = self.name_or_path
                    try:
                        # trust_remote_code=False: the tokenizer is a stock one; without it, AutoTokenizer
                        # would ask again about the router's own auto_map in config.json.
                        verbosity = transformers_logging.get_verbosity()
                        transformers_logging.set_verbosity_error()  # silences a config-type notice
                        if os.path.isdir(source) and not os.path.isfile(os.path.join(source, "tokenizer.json")):
                            raise OSError(f"{os.path.join(source, 'tokenizer.json')} does not exist")
                        try:
                            tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=False)
                        finally:
                            transformers_logging.set_verbosity(verbosity)
                    except Exception as error:
                        raise OSError(
                            f"This router has no tokenizer (looked in {source!r}: {error}). Save one next "
                            "to config.json (router.set_tokenizer(tok); router.save_pretrained(folder))."
                        ) from error
                    if self.is_static:
                        tokenizer = self._prepare_static_tokenizer(tokenizer, source)
                    else:
                        self._check_tokenizer(tokenizer, source)
                    self._tokenizer = tokenizer
        return self._tokenizer

    def _check_tokenizer(self, tokenizer, source) -> None:
        """Raise `OSError` when the tokenizer's vocabulary cannot be the encoder's (wrong or empty tokenizer.json)."""
        vocab_size = getattr(getattr(self.encoder, "config", None), "vocab_size", None)
        if not isinstance(vocab_size, int):
            return
        # A tokenizer a little smaller than the embedding table is normal (padded tables); one with a
        # few special tokens only, or with ids beyond the table, would route on unknown tokens.
        if not vocab_size // 2 <= len(tokenizer) <= vocab_size:
            raise OSError(
                f"The tokenizer of the router at {source!r} (tokenizer.json) has {len(tokenizer)} tokens but "
                f"its encoder embeds {vocab_size}: it is not the encoder's tokenizer. Save the encoder's "
                "tokenizer with the router (router.set_tokenizer(tok); router.save_pretrained(folder))."
            )

    def set_tokenizer(self, tokenizer) -> None:
        """Attach the tokenizer of the encoder; `save_pretrained` saves it next to the weights."""
        if self.is_static:
            tokenizer = self._prepare_static_tokenizer(tokenizer, "the given tokenizer")
        self._tokenizer = tokenizer

    # Filled in by the carrot_hub package when it is imported; this file travels to the Hub alone and
    # imports nothing from it. `model_card_writer(router, folder)` writes the CARROT model card
    # (README.md) next to the weights; `hub_publisher(router, repo_id, **options)` sends the router
    # and that card in one commit. Without the package both stay None and transformers' own
    # `save_pretrained` / `push_to_hub` apply.
    model_card_writer = None
    hub_publisher = None
    def _prepare_static_tokenizer(self, tokenizer, source):
        """
        Check that a static router's tokenizer indexes its token table (one row per token) and turn
        off any padding or truncation its backend was saved with (prompts are cut by the router).
        """
        size = len(tokenizer)
        if size != self.config.static_vocab_size:
            raise ValueError(
                f"The static encoder's token table has {self.config.static_vocab_size} rows but the tokenizer "
                f"({source}) has {size} tokens: they come from different distillations. Save the router with "
                "the tokenizer it was distilled with (the one `distill_static_encoder` returned)."
            )
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is None:
            raise ValueError(f"A static router needs a fast (tokenizers-backed) tokenizer; {source} is not one.")
        if backend.padding is not None:
            backend.no_padding()
        if backend.truncation is not None:
            backend.no_truncation()
        return tokenizer

    def save_pretrained(self, save_directory, *args, **kwargs):
        """
        Save config, weights, remote code (`auto_map`) and the tokenizer into `save_directory`, and,
        with carrot_hub installed, the model card (README.md): the folder is a complete Hub repo.
        """
        result = super().save_pretrained(save_directory, *args, **kwargs)
        if kwargs.get("is_main_process", True):
            self.tokenizer.save_pretrained(save_directory)
            if self.model_card_writer is not None:
                self.model_card_writer(self, save_directory)
        return result

    def push_to_hub(self, repo_id: str, **options):
        """
        Publish the router to the Hub in one commit. With carrot_hub installed this sends the CARROT
        model card with it (candidates, dated prices, μ, usage, limitations) and accepts
        `eval_results=` (a `carrot evaluate` JSON, path or dict: model-index metrics in the card) and
        `plot=` (its cost–quality PNG), besides transformers' options (commit_message, private,
        token, revision, create_pr, tags); see `carrot_hub.router_publishing.push_router`.
        """
        if self.hub_publisher is not None:
            return self.hub_publisher(self, repo_id, **options)
        extra = sorted({"eval_results", "plot"} & set(options))
        if extra:
            raise TypeError(f"push_to_hub({', '.join(extra)}=...) needs the carrot_hub package: pip install carrot_hub.")
        return super().push_to_hub(repo_id, **options)

    # ---------------------------------------------------------------------------------- routing

    def encode(self, prompts: Sequence[str], batch_size: int = 64, progress: bool = False) -> PromptEncoding:
        """
        Tokenize and embed prompts. They are tokenized `TOKENIZE_CHUNK_PROMPTS` at a time (memory
        stays flat however many prompts are given), each chunk sorted by length so that each batch
        pads little, encoded under inference mode, and returned in input order: embeddings
        `(batch, hidden)`, as ordinary tensors (usable to train heads on).
        """
        prompts = check_prompts(prompts)
        batch_size = check_positive_int(batch_size, "batch_size")
        if self.is_static:
            return self._encode_static(prompts)
        hidden = self.embedding_size
        embeddings = torch.empty(len(prompts), hidden)
        input_tokens = torch.empty(len(prompts))
        truncated = []
        pad_id = self.tokenizer.pad_token_id or 0
        n_batches = sum(
            math.ceil(min(TOKENIZE_CHUNK_PROMPTS, len(prompts) - start) / batch_size)
            for start in range(0, len(prompts), TOKENIZE_CHUNK_PROMPTS)
        )
        bar = tqdm(total=n_batches, desc="encoding prompts", unit="batch", disable=not progress)
        for offset in range(0, len(prompts), TOKENIZE_CHUNK_PROMPTS):
            chunk = prompts[offset : offset + TOKENIZE_CHUNK_PROMPTS]
            token_ids, counts, chunk_truncated = self._tokenize(chunk)
            order = sorted(range(len(chunk)), key=lambda i: len(token_ids[i]))
            for start in range(0, len(order), batch_size):
                rows = order[start : start + batch_size]
                input_ids, attention_mask = pad_batch([token_ids[i] for i in rows], pad_id)
                with torch.inference_mode():
                    batch_embeddings = self.embed(input_ids.to(self.device), attention_mask.to(self.device))
                embeddings[torch.tensor(rows) + offset] = batch_embeddings.float().cpu()
                bar.update(1)
            input_tokens[offset : offset + len(chunk)] = torch.tensor(counts, dtype=torch.float32)
            truncated.extend(chunk_truncated)
        bar.close()
        return PromptEncoding(embeddings, input_tokens, truncated, fallback_embedding=[False] * len(prompts))

    @torch.inference_mode()
    def _encode_static(self, prompts: list[str]) -> PromptEncoding:
        """
        A static encoder's embeddings: `TOKENIZE_CHUNK_PROMPTS` prompts at a time (memory stays flat),
        each chunk in one table lookup, with no sorting or padding (a bag of tokens has no length).
        """
        parts = [
            self._encode_static_chunk(prompts[start : start + TOKENIZE_CHUNK_PROMPTS])
            for start in range(0, len(prompts), TOKENIZE_CHUNK_PROMPTS)
        ]
        if len(parts) == 1:
            return parts[0]
        return PromptEncoding(
            torch.cat([part.embeddings for part in parts]) if parts else torch.zeros(0, self.embedding_size),
            torch.cat([part.input_tokens for part in parts]) if parts else torch.zeros(0),
            [flag for part in parts for flag in part.truncated],
            fallback_embedding=[flag for part in parts for flag in part.fallback_embedding],
        )

    def _encode_static_chunk(self, prompts: list[str]) -> PromptEncoding:
        return self._embed_static_tokens(*self._tokenize_static(prompts))

    def _embed_static_tokens(self, token_ids: list[array.array], input_tokens: list[int], truncated: list[bool]) -> PromptEncoding:
        """What `_tokenize_static` gives → the prompts' `PromptEncoding`, in one table lookup."""
        return PromptEncoding(
            self._embed_static_ids(token_ids),
            torch.tensor(input_tokens, dtype=torch.float32),
            truncated,
            fallback_embedding=[len(ids) == 0 for ids in token_ids],
        )

    def _embed_static_ids(self, token_ids: Sequence[array.array]) -> torch.Tensor:
        """Prompts' token ids (`array(TOKEN_ID_TYPE)` each) → their `(batch, embedding_size)` embeddings, in one table lookup."""
        lengths = [len(ids) for ids in token_ids]
        device = self.encoder.token_embeddings.weight.device
        offsets = _long_tensor(array.array("q", [0, *itertools.accumulate(lengths[:-1])])).to(device)
        flat = bytearray().join(token_ids)  # the packed ids in one writable buffer, no Python ints
        flat = torch.frombuffer(flat, dtype=_TOKEN_ID_DTYPE).long() if flat else torch.zeros(0, dtype=torch.long)
        empty = torch.tensor([n == 0 for n in lengths], device=device) if 0 in lengths else False
        return self.encoder.embed_bags(flat.to(device), offsets, empty).cpu()

    @torch.inference_mode()
    def predict(self, prompts: Sequence[str], batch_size: int = 64, progress: bool = False) -> PromptPredictions:
        """Encode prompts and predict, for every candidate, quality and output tokens `(batch, n_models)`."""
        if self.is_static:
            return self._predict_static(check_prompts(prompts))
        encoding = self.encode(prompts, batch_size=batch_size, progress=progress)
        return self.predict_encoded(encoding, batch_size=batch_size)

    @torch.inference_mode()
    def _predict_static(self, prompts: list[str]) -> PromptPredictions:
        """
        A static router's predictions, `TOKENIZE_CHUNK_PROMPTS` prompts at a time. Tokenizing is Python
        work that holds the GIL, the table lookup and the search are a few large torch calls that
        release it: while one chunk is embedded and searched on a worker thread, the next one is
        tokenized, so both cores of a small machine work. The many small calls that finish the
        predictions run once, on the whole batch, after both: on the worker each would wait for the
        GIL that tokenizing holds.
        """
        # Chunks of equal size: a small last chunk would leave its predecessor's search with nothing to overlap.
        size = math.ceil(len(prompts) / max(1, math.ceil(len(prompts) / TOKENIZE_CHUNK_PROMPTS)))
        chunks = [prompts[start : start + size] for start in range(0, len(prompts), size)]
        if len(chunks) <= 1:
            return self.predict_encoded(self._encode_static(prompts))
        tokenized, searches = [], []
        with _SHORT_SWITCH_INTERVAL, ThreadPoolExecutor(max_workers=1, thread_name_prefix="carrot-predict") as pool:
            for chunk in chunks:
                tokenized.append(self._tokenize_static(chunk))
                searches.append(pool.submit(self._search_static_tokens, tokenized[-1][0]))
            searched = [future.result() for future in searches]
        quality, log_tokens, similarity = (
            None if parts[0] is None else torch.cat(parts) for parts in zip(*searched)
        )
        quality, output_tokens, support, low, high = (
            value.float().cpu() for value in self._finish_predictions(quality, log_tokens, similarity)
        )
        fallback = [len(ids) == 0 for chunk in tokenized for ids in chunk[0]]
        return PromptPredictions(
            quality, output_tokens, torch.tensor([n for chunk in tokenized for n in chunk[1]], dtype=torch.float32),
            [flag for chunk in tokenized for flag in chunk[2]],
            candidate_models=list(self.config.candidate_models),
            support=support, quality_low=low, quality_high=high, fallback_embedding=fallback,
        )

    @torch.inference_mode()
    def _search_static_tokens(self, token_ids: list[array.array]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """One chunk's token ids → what [`_search_predictions`] gives for its embeddings."""
        embeddings = self._embed_static_ids(token_ids)
        return self._search_predictions(embeddings.to(self.predictor_device, self.predictor_dtype))

    @torch.inference_mode()
    def predict_encoded(self, encoding: PromptEncoding, batch_size: int = 1024) -> PromptPredictions:
        """Predictions from precomputed embeddings (no encoder pass), in chunks of `batch_size`."""
        n_models = self.config.num_candidates
        parts = [[torch.zeros(0, n_models)], [torch.zeros(0, n_models)], [torch.zeros(0)], [torch.zeros(0, n_models)], [torch.zeros(0, n_models)]]
        device, dtype = self.predictor_device, self.predictor_dtype
        for start in range(0, encoding.embeddings.shape[0], batch_size):
            chunk = encoding.embeddings[start : start + batch_size].to(device, dtype)
            for part, value in zip(parts, self.predict_with_support(chunk)):
                part.append(value.float().cpu())
        # One chunk (e.g. a single prompt) needs no concatenation.
        quality, output_tokens, support, low, high = (part[1] if len(part) == 2 else torch.cat(part) for part in parts)
        return PromptPredictions(
            quality, output_tokens, encoding.input_tokens, list(encoding.truncated),
            candidate_models=list(self.config.candidate_models),
            support=support, quality_low=low, quality_high=high,
            fallback_embedding=list(encoding.fallback_embedding),
        )

    def _tokenize(self, prompts: list[str]) -> tuple[list[list[int]], list[int], list[bool]]:
        """
        Prompts → token ids cut to `max_prompt_tokens` (special tokens included), input token
        counts (untruncated, at least one per `MAX_BYTES_PER_TOKEN` UTF-8 bytes), truncated flags.
        """
        if self.is_static:
            return self._tokenize_static(prompts)
        tokenizer = self.tokenizer
        max_length = self.config.max_prompt_tokens
        # The tokenizer's padding/truncation state is shared; concurrent calls must not interleave.
        with self._tokenizer_lock:
            encoded = tokenizer(prompts, add_special_tokens=True, truncation=False, verbose=False)["input_ids"]
            n_special = tokenizer.num_special_tokens_to_add(pair=False)
        token_ids, input_tokens, truncated = [], [], []
        keep_end = self.config.truncation_side == "left"
        for prompt, ids in zip(prompts, encoded):
            input_tokens.append(max(len(ids) - n_special, math.ceil(len(prompt.encode("utf-8")) / MAX_BYTES_PER_TOKEN)))
            if len(ids) > max_length:
                if keep_end:  # keep the opening special token and the last tokens (the question)
                    ids = ids[:1] + ids[-(max_length - 1) :]
                else:  # keep the leading tokens and the closing special token ([SEP] / </s>)
                    ids = ids[: max_length - 1] + ids[-1:]
                truncated.append(True)
            else:
                truncated.append(False)
            token_ids.append(ids)
        return token_ids, input_tokens, truncated

    def _tokenize_static(self, prompts: list[str]) -> tuple[list[array.array], list[int], list[bool]]:
        """
        As `_tokenize`, for the static encoder, each prompt's ids an `array(TOKEN_ID_TYPE)`. Its
        tokenizer adds no special tokens (distillation removed them) and its unknown token has no
        row worth averaging: like model2vec, it is dropped, and the last `max_prompt_tokens` known
        tokens are kept (the first ones with truncation_side="right"). With the word-piece fast path
        only a window at the kept end gets its ids built; the rest of the prompt is only counted
        (`CachedWordPieceTokenizer.window_ids`).
        """
        tokenizer = self.tokenizer
        unknown = tokenizer.unk_token_id
        limit = self.config.max_prompt_tokens
        keep_end = self.config.truncation_side == "left"
        with self._tokenizer_lock:
            backend = tokenizer.backend_tokenizer
            if self._word_piece_cache is None or self._word_piece_cache[0] is not backend:
                self._word_piece_cache = (backend, CachedWordPieceTokenizer.for_tokenizer(tokenizer))
            fast_path = self._word_piece_cache[1]
            if fast_path is not None:
                encoded, counts = fast_path.window_ids(prompts, limit, from_end=keep_end, skip_id=unknown)
            else:
                encodings = backend.encode_batch_fast(prompts, add_special_tokens=False)
                encoded = [array.array(TOKEN_ID_TYPE, encoding.ids) for encoding in encodings]
                counts = [len(ids) for ids in encoded]
        token_ids, input_tokens, truncated = [], [], []
        for prompt, ids, n_tokens in zip(prompts, encoded, counts):
            n_bytes = len(prompt) if prompt.isascii() else len(prompt.encode("utf-8"))
            input_tokens.append(max(n_tokens, math.ceil(n_bytes / MAX_BYTES_PER_TOKEN)))
            cut = n_tokens > len(ids)  # tokens outside the window
            if unknown is not None and unknown in ids:
                ids = array.array(TOKEN_ID_TYPE, [i for i in ids if i != unknown])
            if len(ids) > limit:
                ids = ids[-limit:] if keep_end else ids[:limit]
                cut = True
            truncated.append(cut)
            token_ids.append(ids)
        return token_ids, input_tokens, truncated

    def route(
        self,
        prompts: Sequence[str] | str,
        mu: float | None = None,
        prices: Mapping | None = None,
        allowed: Sequence[str] | None = None,
        max_cost: float | None = None,
        batch_size: int = 64,
        ood: str | None = None,
    ) -> RoutingDecision:
        """
        Choose a candidate LLM for every prompt.

        Args:
            prompts: a list of strings (a single string is routed as a list of one).
            mu: the quality/cost trade-off in [0, 1] for this call (0 = best predicted quality,
                1 = cheapest); defaults to `config.default_mu`.
            prices: per-call price overrides, `{model: {"input": $/M, "output": $/M}}` (either key
                may be left out) or `{model: (input, output)}`; other models keep their price.
            allowed: restrict the choice to these candidates.
            max_cost: exclude candidates whose predicted cost in dollars exceeds it; a prompt for
                which none fits gets its cheapest allowed candidate, flagged in `over_budget`.
            batch_size: prompts encoded per forward pass.
            ood: what to do with prompts out of distribution (support at or below
                `config.support_threshold`): `"predict"` routes on the predicted quality, `"prior"`
                on each candidate's prior quality, `"model:<name>"` sends them to that candidate
                (it must be allowed); defaults to `config.ood_policy`. `decision.ood_applied` says
                which prompts it changed.

        Returns:
            A [`RoutingDecision`].
        """
        prompts = check_prompts(prompts)
        options = self._resolve_options(mu, prices, allowed, max_cost, ood)
        predictions = self.predict(prompts, batch_size=batch_size)
        return self._decide(predictions, *options)

    def decide(
        self,
        predictions: PromptPredictions,
        mu: float | None = None,
        prices: Mapping | None = None,
        allowed: Sequence[str] | None = None,
        max_cost: float | None = None,
        ood: str | None = None,
    ) -> RoutingDecision:
        """Like [`route`], from predictions already made by [`predict`]: changing μ or prices needs no re-encoding."""
        options = self._resolve_options(mu, prices, allowed, max_cost, ood)
        return self._decide(predictions, *options)

    def resolve_ood(self, ood: str | None, allowed_mask: torch.Tensor | None = None) -> str:
        """The ood policy in force (`config.ood_policy` when None), checked against the candidates and `allowed`."""
        policy = check_ood_policy(self.config.ood_policy if ood is None else ood, self.config.candidate_models)
        if policy.startswith("model:") and allowed_mask is not None:
            name = policy[len("model:") :]
            if not bool(allowed_mask[self.config.candidate_models.index(name)]):
                raise ValueError(
                    f"ood policy {policy!r} sends prompts out of distribution to {name!r}, which `allowed` excludes. "
                    "Allow it, or pass another ood policy ('predict', 'prior' or 'model:<an allowed candidate>')."
                )
        return policy

    def _resolve_options(self, mu, prices, allowed, max_cost, ood=None):
        mu = check_mu(self.config.default_mu if mu is None else mu)
        input_prices, output_prices = self.resolve_prices(prices)
        allowed_mask = self.resolve_allowed(allowed)
        if max_cost is not None:
            max_cost = check_number(max_cost, "max_cost", "a number of US dollars per prompt")
            if not math.isfinite(max_cost) or max_cost < 0:
                raise ValueError(f"max_cost must be a finite number of dollars ≥ 0, got {max_cost!r}.")
        ood = self.resolve_ood(ood, allowed_mask)
        return mu, input_prices, output_prices, allowed_mask, max_cost, ood

    def _check_predictions(self, predictions: PromptPredictions) -> None:
        """Raise `ValueError` when `predictions` were not made by a router with these candidates."""
        names = self.config.candidate_models
        made_for = predictions.candidate_models
        if made_for is not None and list(made_for) != list(names):
            raise ValueError(
                f"These predictions were made by a router with candidates {list(made_for)}, not this "
                f"router's {list(names)}: call predict() on this router."
            )
        batch = predictions.quality.shape[0] if predictions.quality.ndim == 2 else -1
        shapes_agree = (
            predictions.quality.shape == (batch, len(names))
            and predictions.output_tokens.shape == (batch, len(names))
            and predictions.input_tokens.shape == (batch,)
        )
        if not shapes_agree:
            raise ValueError(
                f"The predictions have quality {tuple(predictions.quality.shape)}, output_tokens "
                f"{tuple(predictions.output_tokens.shape)} and input_tokens {tuple(predictions.input_tokens.shape)}; "
                f"this router needs (batch, {len(names)}), (batch, {len(names)}) and (batch,): "
                "were they made by another router? Call predict() on this router."
            )

    def _decide(
        self, predictions, mu, input_prices, output_prices, allowed_mask, max_cost, ood="predict"
    ) -> RoutingDecision:
        self._check_predictions(predictions)
        cost = predicted_cost(predictions.input_tokens, predictions.output_tokens, input_prices, output_prices)
        n = len(predictions)
        support = predictions.support if predictions.support is not None else torch.full((n,), math.nan)
        known = ~torch.isnan(support)
        out_of_distribution = known & (support <= self.config.support_threshold)
        applied = torch.zeros(n, dtype=torch.bool)
        quality = predictions.quality
        if ood == "prior" and self.reliability is not None and bool(out_of_distribution.any()):
            prior = self.reliability.prior.to(quality.device, quality.dtype)[None, :]
            quality = torch.where(out_of_distribution[:, None], prior, quality)
            applied = out_of_distribution
        indices, utility, over_budget = choose_candidates(
            quality, cost, mu, self.config.cost_scale, allowed_mask, max_cost
        )
        if ood.startswith("model:") and bool(out_of_distribution.any()):
            column = self.config.candidate_models.index(ood[len("model:") :])
            indices = torch.where(out_of_distribution, torch.full_like(indices, column), indices)
            if max_cost is not None:
                over_budget = torch.where(out_of_distribution, cost[:, column] > max_cost, over_budget)
            applied = out_of_distribution
        in_distribution = [
            None if not is_known else not is_out for is_known, is_out in zip(known.tolist(), out_of_distribution.tolist())
        ]
        names = self.config.candidate_models
        return RoutingDecision(
            models=[names[i] for i in indices.tolist()],
            model_indices=indices,
            candidate_models=list(names),
            quality=predictions.quality,
            output_tokens=predictions.output_tokens,
            input_tokens=predictions.input_tokens,
            cost=cost,
            utility=utility,
            mu=mu,
            prices={
                name: {"input": float(p_in), "output": float(p_out)}
                for name, p_in, p_out in zip(names, input_prices.tolist(), output_prices.tolist())
            },
            truncated=list(predictions.truncated),
            over_budget=over_budget.tolist(),
            support=support,
            in_distribution=in_distribution,
            quality_low=predictions.quality_low,
            quality_high=predictions.quality_high,
            ood_policy=ood,
            ood_applied=applied.tolist(),
            fallback_embedding=list(predictions.fallback_embedding),
        )

    # ----------------------------------------------------------------------------- kNN memory

    def remember(
        self,
        prompts: Sequence[str] | str,
        model: str | Sequence[str],
        scores: Sequence[float] | float,
        output_tokens: Sequence[float | None] | float | None = None,
        batch_size: int = 64,
    ) -> dict:
        """
        Add observed cells to a kNN router's memory, without retraining: each prompt joins the memory
        as a new row where only its model's cell is observed (the other candidates' cells stay
        unobserved, so their predictions ignore the row). Later predictions for that model count the
        new rows among its neighbours. `save_pretrained` keeps them.

        Memory is bounded by `config.knn_memory_cap` (None: the training rows plus
        `DEFAULT_MAX_REMEMBERED_ROWS`); past it the oldest remembered rows are evicted first, training
        rows only when the cap is below their number (see [`CarrotKNNMemory.append`]). Memory costs
        4·(hidden + 4·n_models) bytes per row (1.7 kB for all-MiniLM-L6-v2 and 11 candidates).

        Args:
            prompts: `n` prompts (a single string counts as one).
            model: the candidate that answered, one name for all prompts or one per prompt.
            scores: `n` observed qualities in [0, 1] (a single number for a single prompt).
            output_tokens: `n` observed output-token counts ≥ 0; None (or a None entry) leaves the
                token cell unobserved.
            batch_size: prompts encoded per forward pass.

        Returns:
            `{"added", "evicted", "memory_size", "remembered_rows"}`.
        """
        if self.config.predictor_kind != "knn":
            raise TypeError(
                "remember() grows a kNN router's memory; this router predicts with MLP heads, which would need "
                "fine-tuning on the new cells. Train a router on the outcome log instead (carrot train --data LOG_DIR), "
                "or serve a kNN router."
            )
        prompts = check_prompts(prompts)
        n = len(prompts)
        models = [model] * n if isinstance(model, str) else list(model) if isinstance(model, Sequence) else None
        if models is None or len(models) != n:
            raise ValueError(f"model must be one candidate name or one per prompt ({n}), got {model!r:.80}.")
        columns = [self._candidate_index(name, what="remember()") for name in models]
        scores = _observed_values(scores, n, "scores", upper=1.0)
        tokens = [None] * n if output_tokens is None else _observed_values(output_tokens, n, "output_tokens", allow_none=True)
        memory = self.predictor
        if n == 0:
            return {"added": 0, "evicted": 0, "memory_size": self.config.knn_memory_size,
                    "remembered_rows": self.config.knn_remembered_rows}
        embeddings = self.encode(prompts, batch_size=batch_size).embeddings
        n_models = self.config.num_candidates
        quality = torch.full((n, n_models), math.nan)
        token_cells = torch.full((n, n_models), math.nan)
        rows = torch.arange(n)
        quality[rows, torch.tensor(columns)] = torch.tensor(scores, dtype=torch.float32)
        token_cells[rows, torch.tensor(columns)] = torch.tensor([math.nan if t is None else t for t in tokens])
        with self._remember_lock:  # two concurrent calls must not both grow the same old memory
            cap = self.config.knn_memory_cap
            if cap is None:
                cap = self.config.knn_memory_size - self.config.knn_remembered_rows + DEFAULT_MAX_REMEMBERED_ROWS
            remembered, evicted = memory.append(embeddings, quality, token_cells, self.config.knn_remembered_rows, cap)
            self.config.knn_memory_size = int(memory.embeddings.shape[0])
            self.config.knn_remembered_rows = int(remembered)
        return {"added": n, "evicted": int(evicted), "memory_size": self.config.knn_memory_size,
                "remembered_rows": self.config.knn_remembered_rows}

    # ----------------------------------------------------------------------------------- prices

    def resolve_prices(self, overrides: Mapping | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """
        The price table in force with `overrides` applied: input and output $/M tokens, `(n_models,)`
        float64 each (float64 so that prices round-trip exactly into decisions and config.json).
        """
        input_prices = list(self.config.input_price_per_million)
        output_prices = list(self.config.output_price_per_million)
        if overrides is not None:
            if not isinstance(overrides, Mapping):
                raise ValueError(
                    "prices must be a mapping {model: {'input': $/M, 'output': $/M}}, "
                    f"got {type(overrides).__name__}."
                )
            for name, price in overrides.items():
                column = self._candidate_index(name, what="prices")
                new_input, new_output = _parse_price_entry(name, price)
                if new_input is not None:
                    input_prices[column] = new_input
                if new_output is not None:
                    output_prices[column] = new_output
        return (
            torch.tensor(input_prices, dtype=torch.float64),
            torch.tensor(output_prices, dtype=torch.float64),
        )

    def set_prices(self, prices: Mapping, recorded_on: str | None = None) -> None:
        """Change the price table permanently (save with `save_pretrained`); unnamed models keep theirs."""
        input_prices, output_prices = self.resolve_prices(prices)
        changed = [
            name
            for name, p_in, p_out, new_in, new_out in zip(
                self.config.candidate_models, self.config.input_price_per_million,
                self.config.output_price_per_million, input_prices.tolist(), output_prices.tolist(),
            )
            if (p_in, p_out) != (new_in, new_out)
        ]
        self.config.input_price_per_million = [float(p) for p in input_prices.tolist()]
        self.config.output_price_per_million = [float(p) for p in output_prices.tolist()]
        if changed and getattr(self.config, "prices_source", None):
            self.config.prices_source = f"{self.config.prices_source}; since changed by hand for {', '.join(changed)}"
        if recorded_on is not None:
            self.config.prices_recorded_on = recorded_on

    def resolve_allowed(self, allowed: Sequence[str] | None) -> torch.Tensor | None:
        """`allowed` names → `(n_models,)` bool mask, or None when every candidate is allowed."""
        if allowed is None:
            return None
        if isinstance(allowed, str):
            allowed = [allowed]
        mask = torch.zeros(self.config.num_candidates, dtype=torch.bool)
        for name in allowed:
            mask[self._candidate_index(name, what="allowed")] = True
        if not mask.any():
            raise ValueError("allowed is empty: name at least one candidate model.")
        return mask

    def _candidate_index(self, name, what: str) -> int:
        try:
            return self.config.candidate_models.index(name)
        except ValueError:
            raise ValueError(
                f"{what} names {name!r}, which is not a candidate of this router. "
                f"Known candidates: {', '.join(self.config.candidate_models)}."
            ) from None

    # ------------------------------------------------------------------------------ consistency

    def check_consistency(self, source: str = "this router") -> None:
        """
        Raise `ValueError` if the weights' number of candidates differs from the config's price table,
        or if the predictor's weights (kNN memory or heads) hold NaN or infinite values.
        """
        n_models = self.config.num_candidates
        if isinstance(self.predictor, CarrotKNNMemory):
            width = self.predictor.quality.shape[1]
        else:
            width = self.predictor.quality[-1].out_features
        if width != n_models:
            raise ValueError(
                f"The router at {source} predicts {width} candidates but its config lists {n_models} "
                f"({', '.join(self.config.candidate_models)}). The price table must match the heads."
            )
        for name, tensor in self.predictor.state_dict().items():
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                raise ValueError(
                    f"The router at {source}: model.safetensors holds NaN or infinite values in predictor.{name}; "
                    "its predictions would not be numbers. Save or download the router again."
                )
        if self.reliability is not None and self.reliability.prior.shape[0] != n_models:
            raise ValueError(
                f"The router at {source} has calibration for {self.reliability.prior.shape[0]} candidates but its "
                f"config lists {n_models}. Add or remove candidates with `carrot add-model` / `carrot remove-model`."
            )


def carrot_loss(quality_raw, log_tokens, quality_labels, output_token_labels, is_logits: bool) -> torch.Tensor:
    """
    Masked training loss: BCE of quality against observed scores (NaN = missing) plus MSE of
    log(1 + output tokens). All inputs `(batch, n_models)`.
    """
    loss = quality_raw.new_zeros(())
    if quality_labels is not None:
        observed = ~torch.isnan(quality_labels)
        target = torch.nan_to_num(quality_labels, nan=0.0).to(quality_raw.dtype)
        if is_logits:
            per_cell = F.binary_cross_entropy_with_logits(quality_raw, target, reduction="none")
        else:
            per_cell = F.binary_cross_entropy(quality_raw.clamp(1e-6, 1 - 1e-6), target, reduction="none")
        loss = loss + (per_cell * observed).sum() / observed.sum().clamp(min=1)
    if output_token_labels is not None:
        observed = ~torch.isnan(output_token_labels)
        target = torch.log1p(torch.nan_to_num(output_token_labels, nan=0.0).clamp(min=0)).to(log_tokens.dtype)
        loss = loss + (((log_tokens - target) ** 2) * observed).sum() / observed.sum().clamp(min=1)
    return loss


def _long_tensor(values: array.array) -> torch.Tensor:
    """An int64 tensor over an `array('q')` (about 3 times faster than `torch.tensor` from a list)."""
    return torch.frombuffer(values, dtype=torch.long) if len(values) else torch.zeros(0, dtype=torch.long)


def pad_batch(token_ids: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad to the longest sequence: → input_ids `(batch, seq)`, attention_mask `(batch, seq)`."""
    longest = max(len(ids) for ids in token_ids)
    input_ids = torch.full((len(token_ids), longest), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(token_ids), longest), dtype=torch.long)
    for row, ids in enumerate(token_ids):
        input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        attention_mask[row, : len(ids)] = 1
    return input_ids, attention_mask


def prompt_has_content(prompt: str) -> bool:
    """Whether `prompt` holds anything but whitespace, separators, control and zero-width characters."""
    return any(unicodedata.category(character) not in _NO_CONTENT_CATEGORIES for character in prompt)


def check_prompts(prompts) -> list[str]:
    """Return prompts as a list of strings with content, or raise naming the first bad position."""
    if isinstance(prompts, str):
        return [prompts]
    if prompts is None or not isinstance(prompts, Sequence):
        raise TypeError(f"prompts must be a list of strings, got {type(prompts).__name__}.")
    prompts = list(prompts)
    for position, prompt in enumerate(prompts):
        if not isinstance(prompt, str):
            raise TypeError(f"prompt {position} is a {type(prompt).__name__}, not a string: {prompt!r:.80}")
        if not prompt_has_content(prompt):
            raise ValueError(
                f"prompt {position} is empty (nothing but whitespace, control or zero-width characters): "
                "there is nothing to route. Remove it or give it text."
            )
    return prompts


def _observed_values(values, n: int, what: str, upper: float | None = None, allow_none: bool = False) -> list:
    """`n` finite numbers ≥ 0 (and ≤ `upper`), None allowed when `allow_none`; a one-line error otherwise."""
    if isinstance(values, (int, float)) and not isinstance(values, bool) and n == 1:
        values = [values]
    if isinstance(values, torch.Tensor):
        values = values.tolist()
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) and not hasattr(values, "tolist"):
        raise ValueError(f"{what} must be a list of {n} numbers, got {type(values).__name__}.")
    values = list(values.tolist() if hasattr(values, "tolist") else values)
    if len(values) != n:
        raise ValueError(f"{what} has {len(values)} values for {n} prompts; give one per prompt.")
    bound = f"in [0, {upper:g}]" if upper is not None else "≥ 0"
    for position, value in enumerate(values):
        if value is None and allow_none:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                or value < 0 or (upper is not None and value > upper):
            raise ValueError(f"{what}[{position}] is {value!r}; it must be a finite number {bound}.")
    return [None if value is None else float(value) for value in values]


def _parse_price_entry(name: str, price) -> tuple[float | None, float | None]:
    if isinstance(price, Mapping):
        unknown = set(price) - {"input", "output"}
        if unknown:
            raise ValueError(f"price of {name!r} has unknown keys {sorted(unknown)}; use 'input' and 'output'.")
        new_input, new_output = price.get("input"), price.get("output")
    elif isinstance(price, Sequence) and not isinstance(price, str) and len(price) == 2:
        new_input, new_output = price
    else:
        raise ValueError(
            f"price of {name!r} must be {{'input': $/M, 'output': $/M}} or (input, output), got {price!r}."
        )
    return (
        None if new_input is None else check_price(new_input, f"input price of {name!r}"),
        None if new_output is None else check_price(new_output, f"output price of {name!r}"),
    )


__all__ = [
    "CarrotRouter",
    "CarrotPreTrainedModel",
    "CarrotRouterOutput",
    "CarrotReliability",
    "RoutingDecision",
    "PromptPredictions",
    "PromptEncoding",
    "choose_candidates",
    "carrot_utility",
    "predicted_cost",
]
