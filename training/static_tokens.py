"""
Static token tables other than the shipped one, for choosing the static encoder: model2vec's plain
distillation at another width (or none), and token-level training in the manner of `tokenlearn`
(model2vec's pre-training: the table is trained so that a prompt's mean of token rows reproduces the
sentence encoder's embedding of that prompt).

`tokenlearn` (PyPI) itself needs sentence-transformers and datasets and reads its corpus from the Hub;
its training loop is what `learn_token_table` reproduces with torch alone (same parametrisation:
unit token vectors times a learned per-token weight, weighted mean; Adam at tokenlearn's learning
rate, early stopping on a held-out tenth of the corpus). Unlike tokenlearn (dense AdamW, batches of
256) the rows get sparse gradients and sparse Adam in batches of 64: a step then touches only the
rows of its prompts' tokens, which on two CPU cores is the difference between seconds and tens of
seconds per epoch, and a token the corpus never uses keeps its row exactly. `objective="tokenlearn"` is its
loss (a linear map of the mean regressed on the teacher's embedding, MSE, the map thrown away after
training); `objective="cosine"` fits the mean itself to the teacher's embedding (1 − cosine), which
is what a kNN router compares.
"""

from __future__ import annotations

import array
import itertools
from collections.abc import Sequence

import torch
from torch.nn import functional as F

OBJECTIVES = ("cosine", "tokenlearn")


def packed_ids(token_ids: Sequence[array.array]) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts' token ids → `(flat (n_tokens,), offsets (n_prompts,))` int64 for `embedding_bag`."""
    lengths = [len(ids) for ids in token_ids]
    offsets = torch.tensor([0, *itertools.accumulate(lengths[:-1])], dtype=torch.long)
    flat = torch.tensor([i for ids in token_ids for i in ids], dtype=torch.long)
    return flat, offsets


def embed_with_rows(rows: torch.Tensor, token_ids: Sequence[array.array]) -> torch.Tensor:
    """
    The static encoder's embeddings with another token table: `rows (vocab, d)` and each prompt's
    ids (as the router's tokenizer keeps them) → `(n_prompts, d)` L2-normalised means; a prompt with
    no token gets the normalised mean of the rows, as `CarrotStaticEncoder` does.
    """
    flat, offsets = packed_ids(token_ids)
    pooled = F.embedding_bag(flat, rows.float(), offsets, mode="mean")
    embeddings = F.normalize(pooled, dim=-1)
    empty = torch.tensor([len(ids) == 0 for ids in token_ids])
    if bool(empty.any()):
        embeddings[empty] = F.normalize(rows.float().mean(0), dim=0)
    return embeddings


def pca_rows(rows: torch.Tensor, dimensions: int) -> torch.Tensor:
    """`rows (vocab, d)` → `(vocab, dimensions)`: centred PCA over the vocabulary, as model2vec reduces its table."""
    centred = rows.double() - rows.double().mean(0)
    _, _, vh = torch.linalg.svd(centred, full_matrices=False)
    return (centred @ vh[:dimensions].T).float()


def learn_token_table(
    rows: torch.Tensor,
    token_ids: Sequence[array.array],
    targets: torch.Tensor,
    objective: str = "cosine",
    batch_size: int = 64,
    lr: float = 1e-3,
    patience: int = 3,
    max_epochs: int = 40,
    validation_fraction: float = 0.1,
    seed: int = 0,
    log=None,
) -> tuple[torch.Tensor, dict]:
    """
    Train a static token table on a corpus (tokenlearn's loop, see the module docstring).

    Args:
        rows: `(vocab, d)` the starting table (a model2vec distillation); rows of tokens the corpus
            never uses come back unchanged.
        token_ids: each corpus prompt's ids as the static router keeps them (prompts with none are skipped).
        targets: `(n_prompts, t)` the sentence encoder's embeddings of the same prompts (t = d for "cosine").
        objective: "cosine" (1 − cosine of the mean and the target) or "tokenlearn" (MSE of a
            linear map of the mean against the target; the map is discarded).
        patience: epochs without a better validation loss (by > 1e-4) before stopping; the best
            epoch's table is returned.

    Returns:
        `(rows (vocab, d), report)`: each row is its unit vector times its learned weight.
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
    keep = [i for i, ids in enumerate(token_ids) if len(ids)]
    token_ids = [token_ids[i] for i in keep]
    targets = torch.as_tensor(targets, dtype=torch.float32)[keep]
    if objective == "cosine" and targets.shape[1] != rows.shape[1]:
        raise ValueError(f"the cosine objective needs targets as wide as the table ({rows.shape[1]}), got {targets.shape[1]}")
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(token_ids), generator=generator)
    n_validation = max(1, int(len(order) * validation_fraction))
    validation, training = order[:n_validation], order[n_validation:]

    torch.manual_seed(seed)
    norms = rows.float().norm(dim=1).clamp(min=1e-12)
    vectors = torch.nn.Parameter(rows.float() / norms[:, None])
    weights = torch.nn.Parameter(norms.clone()[:, None])  # (vocab, 1): a table, for sparse gradients
    head = torch.nn.Linear(rows.shape[1], targets.shape[1]) if objective == "tokenlearn" else None
    optimizers = [torch.optim.SparseAdam([vectors, weights], lr=lr)]
    if head is not None:
        optimizers.append(torch.optim.Adam(head.parameters(), lr=lr))

    def batch(indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        chosen = [token_ids[i] for i in indices.tolist()]
        flat, offsets = packed_ids(chosen)
        lengths = torch.tensor([len(ids) for ids in chosen], dtype=torch.float32)
        token_weights = F.embedding(flat, weights, sparse=True).squeeze(1)
        summed = F.embedding_bag(flat, vectors, offsets, mode="sum", per_sample_weights=token_weights, sparse=True)
        return summed / lengths[:, None], targets[indices]

    def loss_of(means: torch.Tensor, wanted: torch.Tensor) -> torch.Tensor:
        if head is not None:
            return F.mse_loss(head(means), wanted)
        return (1 - F.cosine_similarity(means, wanted, dim=-1)).mean()

    def validation_loss() -> float:
        with torch.no_grad():
            losses = [loss_of(*batch(validation[start:start + batch_size])) * len(validation[start:start + batch_size])
                      for start in range(0, len(validation), batch_size)]
        return float(sum(losses) / len(validation))

    best_loss, best_state, waited, history = validation_loss(), None, 0, []
    history.append(best_loss)
    for epoch in range(max_epochs):
        shuffled = training[torch.randperm(len(training), generator=generator)]
        for start in range(0, len(shuffled), batch_size):
            for optimizer in optimizers:
                optimizer.zero_grad()
            loss_of(*batch(shuffled[start:start + batch_size])).backward()
            for optimizer in optimizers:
                optimizer.step()
        loss = validation_loss()
        history.append(loss)
        if log is not None:
            log(f"epoch {epoch}: validation loss {loss:.5f}")
        if best_loss - loss > 1e-4:
            best_loss, waited = loss, 0
            best_state = (vectors.detach().clone(), weights.detach().clone())
        else:
            waited += 1
            if waited >= patience:
                break
    if best_state is None:
        best_state = (vectors.detach().clone(), weights.detach().clone())
    learned = best_state[0] * best_state[1]
    report = {"objective": objective, "corpus_prompts": len(token_ids), "validation_prompts": int(n_validation),
              "epochs": len(history) - 1, "validation_loss": [round(value, 5) for value in history],
              "best_validation_loss": round(best_loss, 5)}
    return learned, report

