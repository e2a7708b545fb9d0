"""MLP heads on a frozen encoder: trained on precomputed embeddings, early-stopped on a validation split.

Several seeds can be trained and merged into one `CarrotMLPHeads` without any change to the model:
a mean of n one-hidden-layer MLPs equals a single MLP whose hidden layer is the n hidden layers side
by side and whose output layer is the n output layers divided by n. The ensemble averages quality
*logits* and log-tokens, and saves as a plain `predictor_kind="mlp"` router of width n × hidden.
"""

from __future__ import annotations

import copy

import numpy as np
import torch

from carrot_hub.building import fit_support_and_prior
from carrot_hub.configuration_carrot import CarrotConfig
from carrot_hub.reliability import fit_reliability
from carrot_hub.modeling_carrot import CarrotMLPHeads, carrot_loss
from transformers.utils.logging import tqdm

from .embeddings import embed_table
from .prepare import check_training_table, new_training_router


def split_train_validation(n: int, validation_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded split of `range(n)` into (train rows, validation rows), at least one row in each."""
    if not 0.0 < validation_fraction < 1.0:
        raise ValueError(f"validation_fraction must be between 0 and 1, got {validation_fraction!r}.")
    if n < 2:
        raise ValueError(f"Need at least 2 prompts to hold some out for validation, got {n}.")
    order = np.random.default_rng(seed).permutation(n)
    n_validation = min(n - 1, max(1, round(n * validation_fraction)))
    return np.sort(order[n_validation:]), np.sort(order[:n_validation])


def fit_heads(
    heads: CarrotMLPHeads,
    train_embeddings: torch.Tensor,
    train_scores: torch.Tensor,
    train_tokens: torch.Tensor,
    validation_embeddings: torch.Tensor,
    validation_scores: torch.Tensor,
    validation_tokens: torch.Tensor,
    seed: int = 0,
    max_epochs: int = 300,
    patience: int = 20,
    lr: float = 1e-3,
    weight_decay: float = 1e-2,
    batch_size: int = 64,
    token_loss_weight: float = 1.0,
    progress: bool = True,
) -> dict:
    """
    Train `heads` in place with AdamW on `carrot_loss` (masked BCE on quality logits + weighted MSE
    on log(1 + tokens)); stop when the validation loss has not improved for `patience` epochs and
    restore the best epoch's weights.

    Embeddings `(n, hidden)`; scores and tokens `(n, n_models)` with NaN for missing cells.

    Returns:
        `{"best_epoch", "epochs_run", "best_validation_loss", "validation_quality_bce",
        "validation_log_token_mse", "history"}`.
    """
    threads = torch.get_num_threads()
    # The heads are tiny (batches of 64 × 384): one thread is as fast as many, and orders of
    # magnitude faster when other processes share the cores (thread spin-waiting).
    torch.set_num_threads(1)
    try:
        return _fit_heads(
            heads, train_embeddings, train_scores, train_tokens, validation_embeddings, validation_scores,
            validation_tokens, seed, max_epochs, patience, lr, weight_decay, batch_size, token_loss_weight, progress,
        )
    finally:
        torch.set_num_threads(threads)


def _fit_heads(
    heads, train_embeddings, train_scores, train_tokens, validation_embeddings, validation_scores,
    validation_tokens, seed, max_epochs, patience, lr, weight_decay, batch_size, token_loss_weight, progress,
) -> dict:
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # dropout masks
    optimizer = torch.optim.AdamW(heads.parameters(), lr=lr, weight_decay=weight_decay)

    def loss_parts(embeddings, scores, tokens):
        quality_logits, log_tokens = heads(embeddings)
        quality_loss = carrot_loss(quality_logits, log_tokens, scores, None, is_logits=True)
        token_loss = carrot_loss(quality_logits, log_tokens, None, tokens, is_logits=True)
        return quality_loss, token_loss

    best_loss, best_state, best_epoch, best_parts = float("inf"), None, -1, (float("nan"), float("nan"))
    history = []
    n = train_embeddings.shape[0]
    epochs = tqdm(range(max_epochs), desc="training heads", unit="epoch", disable=not progress)
    for epoch in epochs:
        heads.train()
        for rows in torch.randperm(n, generator=generator).split(batch_size):
            quality_loss, token_loss = loss_parts(train_embeddings[rows], train_scores[rows], train_tokens[rows])
            loss = quality_loss + token_loss_weight * token_loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        heads.eval()
        with torch.no_grad():
            quality_loss, token_loss = loss_parts(validation_embeddings, validation_scores, validation_tokens)
        validation_loss = float(quality_loss + token_loss_weight * token_loss)
        history.append(validation_loss)
        if validation_loss < best_loss - 1e-6:
            best_loss, best_epoch = validation_loss, epoch
            best_parts = (float(quality_loss), float(token_loss))
            best_state = copy.deepcopy(heads.state_dict())
        elif epoch - best_epoch >= patience:
            break
        epochs.set_postfix(val=f"{validation_loss:.4f}", best=f"{best_loss:.4f}")
    heads.load_state_dict(best_state)
    heads.eval()
    return {
        "best_epoch": best_epoch + 1,
        "epochs_run": len(history),
        "best_validation_loss": best_loss,
        "validation_quality_bce": best_parts[0],
        "validation_log_token_mse": best_parts[1],
        "history": history,
    }


def merge_heads(members: list[CarrotMLPHeads], config: CarrotConfig, embedding_size: int) -> CarrotMLPHeads:
    """
    One `CarrotMLPHeads` of hidden width `n × hidden` computing the mean of the members' outputs
    (quality logits and log-tokens). `config.head_hidden_size` must already be `n × hidden`.
    """
    merged = CarrotMLPHeads(config, embedding_size)
    n = len(members)
    with torch.no_grad():
        for branch in ("quality", "log_output_tokens"):
            first = [getattr(m, branch)[0] for m in members]
            last = [getattr(m, branch)[-1] for m in members]
            target = getattr(merged, branch)
            target[0].weight.copy_(torch.cat([layer.weight for layer in first], dim=0))
            target[0].bias.copy_(torch.cat([layer.bias for layer in first], dim=0))
            target[-1].weight.copy_(torch.cat([layer.weight for layer in last], dim=1) / n)
            target[-1].bias.copy_(torch.stack([layer.bias for layer in last]).mean(0))
    return merged


def train_heads_router(
    train_table,
    validation_table=None,
    validation_fraction: float = 0.1,
    seed: int = 0,
    encoder: str | None = None,
    embeddings: torch.Tensor | None = None,
    validation_embeddings: torch.Tensor | None = None,
    max_epochs: int = 300,
    patience: int = 20,
    lr: float = 1e-3,
    hidden: int = 256,
    dropout: float = 0.1,
    weight_decay: float = 1e-2,
    batch_size: int = 64,
    ensemble: int = 1,
    token_loss_weight: float = 1.0,
    cost_scale: float | None = None,
    drop_unscored_models: bool = False,
    cache_dir=None,
    progress: bool = True,
    reliability_folds: int = 5,
    **config_fields,
):
    """
    Train MLP heads (quality and output tokens) on the frozen encoder's embeddings.

    Args:
        train_table: a `RoutingTable` with prices.
        validation_table: prompts for early stopping; when None, a seeded `validation_fraction` of
            `train_table` is held out (and the heads train on the rest).
        seed: seeds the split, the initialisation, the batches and dropout.
        encoder: folder or Hub id of a BERT-family encoder (default all-MiniLM-L6-v2); with
            `encoder_kind="static"` (a config field) the encoder a static table is distilled from.
        embeddings: `(len(train_table), hidden)` precomputed with this encoder (computed when None);
            `validation_embeddings` likewise for `validation_table`.
        max_epochs, patience, lr, weight_decay, batch_size, dropout: the optimisation.
        hidden: width of each head's hidden layer (per ensemble member).
        ensemble: number of seeds (seed, seed + 1, ...) trained and merged into one set of heads
            (their mean in logit space); the saved width is `ensemble × hidden`.
        token_loss_weight: weight of the log-token MSE next to the quality BCE.
        cost_scale: dollars per quality point at μ = 0.5 (default: `default_cost_scale(train_table)`).
        reliability_folds: folds of the out-of-fold predictions that fit the calibration (the same
            ensemble is trained once per fold and once per held-out task; see
            `carrot_hub.reliability`); 0 keeps support and prior only (no calibration, no shrinkage).
        config_fields: further `CarrotConfig` fields (e.g. `max_prompt_tokens`, `truncation_side`).

    Returns:
        `(router, report)`: an `"mlp"` `CarrotRouter` and a JSON-serialisable training report.
    """
    train_table = check_training_table(train_table, drop_unscored_models=drop_unscored_models)
    if ensemble < 1:
        raise ValueError(f"ensemble must be at least 1, got {ensemble}.")
    router = new_training_router(
        train_table,
        "mlp",
        encoder=encoder,
        cost_scale=cost_scale,
        head_hidden_size=hidden * ensemble,
        head_dropout=dropout,
        **config_fields,
    )
    if embeddings is None:
        embeddings = embed_table(router, train_table, cache_dir=cache_dir, progress=progress)
    embeddings = torch.as_tensor(embeddings, dtype=torch.float32).clone()  # may be an inference-mode tensor
    if embeddings.shape[0] != len(train_table):
        raise ValueError(f"embeddings has {embeddings.shape[0]} rows but the table has {len(train_table)} prompts.")
    scores = torch.as_tensor(train_table.scores, dtype=torch.float32)
    tokens = torch.as_tensor(train_table.output_tokens, dtype=torch.float32)
    if validation_table is None:
        train_rows, validation_rows = split_train_validation(len(train_table), validation_fraction, seed)
        fit_data = (embeddings[train_rows], scores[train_rows], tokens[train_rows])
        validation_data = (embeddings[validation_rows], scores[validation_rows], tokens[validation_rows])
        n_validation = len(validation_rows)
    else:
        validation_table = validation_table.select_models(train_table.models)
        if validation_embeddings is None:
            validation_embeddings = embed_table(router, validation_table, cache_dir=cache_dir, progress=progress)
        validation_data = (
            torch.as_tensor(validation_embeddings, dtype=torch.float32).clone(),
            torch.as_tensor(validation_table.scores, dtype=torch.float32),
            torch.as_tensor(validation_table.output_tokens, dtype=torch.float32),
        )
        fit_data = (embeddings, scores, tokens)
        n_validation = len(validation_table)

    member_config = CarrotConfig(**{**router.config.to_dict(), "head_hidden_size": hidden})
    embedding_size = embeddings.shape[1]
    settings = dict(max_epochs=max_epochs, patience=patience, lr=lr, weight_decay=weight_decay,
                    batch_size=batch_size, token_loss_weight=token_loss_weight)

    def fit_ensemble(train_data, held_out_data, show_progress=progress):
        members, reports = [], []
        for member in range(ensemble):
            torch.manual_seed(seed + member)
            heads = CarrotMLPHeads(member_config, embedding_size)
            heads.apply(router._init_weights)
            reports.append(fit_heads(heads, *train_data, *held_out_data, seed=seed + member, progress=show_progress, **settings))
            members.append(heads)
        merged = merge_heads(members, router.config, embedding_size) if ensemble > 1 else members[0]
        return merged.eval(), reports

    router.predictor, member_reports = fit_ensemble(fit_data, validation_data)
    router.eval()
    fit_support_and_prior(router, train_table, embeddings=embeddings)
    reliability = None
    if reliability_folds:
        def predict_held_out(train_rows, test_rows):
            """Heads trained (early-stopped on a seeded 10% of `train_rows`) without `test_rows`: their quality."""
            inner_train, inner_validation = split_train_validation(len(train_rows), validation_fraction, seed)
            inner_train, inner_validation = np.asarray(train_rows)[inner_train], np.asarray(train_rows)[inner_validation]
            heads, _ = fit_ensemble(
                (embeddings[inner_train], scores[inner_train], tokens[inner_train]),
                (embeddings[inner_validation], scores[inner_validation], tokens[inner_validation]),
                show_progress=False,
            )
            with torch.no_grad():
                return torch.sigmoid(heads(embeddings[torch.as_tensor(test_rows)])[0]).numpy()

        from .knn import fold_indices

        oof_quality = np.zeros(tuple(scores.shape))
        for held_out in fold_indices(len(train_table), reliability_folds, seed):
            kept = np.setdiff1d(np.arange(len(train_table)), held_out)
            oof_quality[held_out] = predict_held_out(kept, held_out)
        reliability = fit_reliability(router, train_table, embeddings, oof_quality, predict_held_out, seed=seed)
    report = {
        "predictor_kind": "mlp",
        "encoder_kind": router.config.encoder_kind,
        "n_train_prompts": int(fit_data[0].shape[0]),
        "n_validation_prompts": int(n_validation),
        "validation": "given table" if validation_table is not None else f"seeded {validation_fraction:.0%} of train",
        "candidate_models": list(train_table.models),
        "cost_scale": router.config.cost_scale,
        "hidden": hidden,
        "ensemble": ensemble,
        "dropout": dropout,
        "lr": lr,
        "weight_decay": weight_decay,
        "token_loss_weight": token_loss_weight,
        "seed": seed,
        "members": [{k: v for k, v in r.items() if k != "history"} for r in member_reports],
        "best_validation_loss": float(np.mean([r["best_validation_loss"] for r in member_reports])),
        "reliability_folds": reliability_folds,
        "reliability": reliability,
    }
    return router, report
