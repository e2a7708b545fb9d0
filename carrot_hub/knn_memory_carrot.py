"""CARROT-KNN: the training prompts' embeddings with their observed scores and output tokens, and the
nearest-neighbour searches over them.

This file travels to the Hub next to `modeling_carrot.py` as remote code: it imports only torch,
transformers, the standard library and its flat siblings (relative imports).
"""

import hashlib
import math
import threading
from collections.abc import Sequence

import torch
from torch import nn

from .configuration_carrot import CarrotConfig


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
        # Each row's prompt key (`prompt_key_of`; 0: unknown), so a label for a remembered prompt fills
        # its row's cell instead of adding a row. Saved only by routers whose config says they have it.
        self.register_buffer("prompt_keys", torch.zeros(n_memory, dtype=torch.int64),
                             persistent=bool(getattr(config, "knn_prompt_keys", False)))

    @torch.no_grad()
    def fill(self, embeddings: torch.Tensor, quality: torch.Tensor, output_tokens: torch.Tensor,
             prompt_keys: torch.Tensor | None = None) -> None:
        """
        Store the memory. `embeddings (n, hidden)` L2-normalised; `quality`, `output_tokens`
        `(n, n_models)` with NaN for missing cells (infinities are refused); `prompt_keys (n,)` int64
        (`prompt_key_of` of each row's prompt; None: unknown).
        """
        _check_finite_rows(embeddings, quality, output_tokens)
        n = embeddings.shape[0]
        keys = torch.zeros(n, dtype=torch.int64) if prompt_keys is None else torch.as_tensor(prompt_keys, dtype=torch.int64)
        if keys.shape != (n,):
            raise ValueError(f"prompt_keys must hold one key per row ({n}), got shape {tuple(keys.shape)}.")
        self._set_rows(
            embeddings.detach().float().clone(),
            torch.nan_to_num(quality.float(), nan=0.0),
            (~torch.isnan(quality)).float(),
            torch.log1p(torch.nan_to_num(output_tokens.float(), nan=0.0).clamp(min=0)),
            (~torch.isnan(output_tokens)).float(),
            keys.to(embeddings.device).clone(),
        )

    def _set_rows(self, embeddings, quality, quality_observed, log_output_tokens, output_tokens_observed,
                  prompt_keys=None) -> None:
        # All buffers change together under the lock, and `forward` reads them together under it,
        # so a prediction made while `remember()` grows the memory sees either the old or the new rows.
        with self._rows_lock:
            self.embeddings = embeddings
            self.quality = quality
            self.quality_observed = quality_observed
            self.log_output_tokens = log_output_tokens
            self.output_tokens_observed = output_tokens_observed
            if prompt_keys is not None:
                self.prompt_keys = prompt_keys

    def keep_prompt_keys(self) -> None:
        """Save `prompt_keys` with the other buffers from now on (the caller sets `config.knn_prompt_keys`)."""
        self._non_persistent_buffers_set.discard("prompt_keys")

    def rows_of(self, keys: Sequence[int]) -> list[int | None]:
        """The memory row holding each prompt key (its latest row), or None where no row has it."""
        with self._rows_lock:
            prompt_keys = self.prompt_keys
        version = (id(prompt_keys), prompt_keys._version)
        cached = getattr(self, "_row_index", None)
        if cached is None or cached[0] != version:
            index = {key: row for row, key in enumerate(prompt_keys.tolist()) if key}
            cached = self._row_index = (version, index)
        return [cached[1].get(int(key)) if key else None for key in keys]

    @torch.no_grad()
    def fill_cells(self, rows: torch.Tensor, columns: torch.Tensor, quality: torch.Tensor,
                   output_tokens: torch.Tensor) -> None:
        """
        Set observed cells of existing rows: `rows`, `columns`, `quality`, `output_tokens` `(n,)`
        (a NaN token count leaves that token cell as it was). The changed buffers are copied and
        swapped whole, so a prediction meanwhile sees the old or the new cells.
        """
        old = self._rows()
        with self._rows_lock:
            keys = self.prompt_keys
        quality_values, quality_seen, log_tokens, tokens_seen = (tensor.clone() for tensor in old[1:])
        rows, columns = rows.to(quality_values.device), columns.to(quality_values.device)
        quality_values[rows, columns] = quality.float().to(quality_values.device)
        quality_seen[rows, columns] = 1.0
        has_tokens = ~torch.isnan(output_tokens)
        if bool(has_tokens.any()):
            token_rows, token_columns = rows[has_tokens], columns[has_tokens]
            log_tokens[token_rows, token_columns] = torch.log1p(output_tokens[has_tokens].float().clamp(min=0)).to(log_tokens.device)
            tokens_seen[token_rows, token_columns] = 1.0
        self._set_rows(old[0], quality_values, quality_seen, log_tokens, tokens_seen, keys)

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
        prompt_keys: torch.Tensor | None = None,
    ) -> tuple[int, int]:
        """
        Add rows after the existing ones and evict down to `cap` rows.

        Args:
            embeddings: `(n_new, hidden)` L2-normalised.
            quality, output_tokens: `(n_new, n_models)`, NaN where the cell is not observed.
            n_remembered: how many existing rows (the last ones) were remembered rather than trained on.
            cap: the most rows to keep.
            prompt_keys: `(n_new,)` int64 keys of the new rows' prompts (None: unknown).

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
        with self._rows_lock:
            old_keys = self.prompt_keys
        new_keys = torch.zeros(n_new, dtype=torch.int64) if prompt_keys is None else torch.as_tensor(prompt_keys, dtype=torch.int64)
        rows = [
            torch.cat([current[kept_old], added[drop_new:].to(current.device, current.dtype)], 0).contiguous()
            for current, added in zip((*old, old_keys), (*new, new_keys))
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
        or replaced). The cache holds the buffers it was built from and compares them by identity:
        an `id()` alone is reused by a new buffer once the old one is freed (`remember()` swaps
        buffers), and a stale cache then predicted from the old rows or failed on the new ones.
        """
        buffers = (quality, quality_observed, log_output_tokens, output_tokens_observed)
        versions = tuple(tensor._version for tensor in buffers)
        cached = getattr(self, "_stacked_cache", None)
        if cached is None or cached[1] != versions or any(a is not b for a, b in zip(cached[0], buffers)):
            values = torch.cat([quality, log_output_tokens], 1)
            observed = torch.cat([quality_observed, output_tokens_observed], 1)
            cached = self._stacked_cache = (buffers, versions, self._stack_targets(values, observed))
        return cached[2]

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


def prompt_key_of(prompt: str) -> int:
    """A prompt's key in the kNN memory: the first 8 bytes of its UTF-8 text's SHA-256 as a nonzero int64."""
    key = int.from_bytes(hashlib.sha256(prompt.encode("utf-8")).digest()[:8], "little", signed=True)
    return key or 1


def mean_of_largest(similarity: torch.Tensor, k: int) -> torch.Tensor:
    """The mean of the `k` largest values of each row of `similarity (batch, n)` → `(batch,)`."""
    return similarity.amax(1) if k == 1 else similarity.topk(k, dim=1).values.mean(1)  # amax: a third of topk's time


def top_k_mean_similarity(
    embeddings: torch.Tensor, memory: torch.Tensor, k: int, exclude_self: bool = False, chunk_size: int = 1024,
    self_rows: torch.Tensor | None = None,
) -> torch.Tensor:
    """
    Mean cosine similarity of each row of `embeddings (n, hidden)` to its `k` most similar rows of
    `memory (n_memory, hidden)` (both L2-normalised) → `(n,)`. With `exclude_self`, `embeddings` is
    `memory` itself and each row leaves itself out (its leave-one-out similarity); with
    `self_rows (n,)` int64, row i of `embeddings` is row `self_rows[i]` of `memory` and leaves it out
    (the leave-one-out similarity of a sample of the memory's rows).
    """
    n_memory = memory.shape[0]
    if exclude_self and self_rows is None:
        self_rows = torch.arange(embeddings.shape[0])
    k = max(1, min(int(k), n_memory - (0 if self_rows is None else 1)))
    out = torch.empty(embeddings.shape[0], dtype=torch.float32)
    for start in range(0, embeddings.shape[0], chunk_size):
        chunk = embeddings[start : start + chunk_size].to(memory.dtype)
        similarity = chunk @ memory.T
        if self_rows is not None:
            rows = torch.arange(chunk.shape[0], device=similarity.device)
            similarity[rows, self_rows[start : start + chunk.shape[0]].to(similarity.device)] = -math.inf
        out[start : start + chunk.shape[0]] = mean_of_largest(similarity, k).float().cpu()
    return out
