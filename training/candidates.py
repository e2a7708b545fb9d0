"""
Adding and removing candidate models of a trained router without retraining the others.

A community member who has run a new model (a fine-tune, a new release) on a few hundred prompts can
add it to a published router. The existing candidates' predictions do not move:

- kNN routers: the new prompts' embeddings are appended to the memory with the old candidates'
  cells unobserved, and the new candidate's column is unobserved on the old rows. Each candidate's
  neighbours are taken among its own observed rows, so the old candidates see exactly the rows
  they saw before, and the new one sees only its own prompts.
- MLP routers: one output row is appended to the last Linear of each head and only that row is
  fitted (L2-regularised logistic regression for quality, ridge regression for log(1 + tokens),
  on the frozen hidden features of the new prompts; the L2 strength is chosen on a validation
  split). Every other weight is kept bit for bit.

Removing a candidate is the reverse. The config records the parent router and what changed, and
the model card shows both.
"""

from __future__ import annotations

import argparse
import datetime
import os
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from carrot_hub.configuration_carrot import CarrotConfig, check_price
from carrot_hub.knn_memory_carrot import prompt_key_of
from carrot_hub.modeling_carrot import CarrotKNNMemory, CarrotRouter

from .output import save_router_atomically

# Fewer observed prompts than this give estimates too noisy to route with: a kNN mean over k=32
# neighbours needs many more rows than k to be local, and a regression head needs a validation split.
MIN_ROWS = 50
L2_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)
VALIDATION_FRACTION = 0.2


class CandidateError(ValueError):
    """A candidate cannot be added or removed; the message says why and what to do."""


# ------------------------------------------------------------------------------------- add


def add_candidate(
    router: CarrotRouter,
    name: str,
    table,
    input_price: float,
    output_price: float,
    min_rows: int = MIN_ROWS,
    column: str | None = None,
    embeddings: torch.Tensor | np.ndarray | None = None,
    parent: str | None = None,
    seed: int = 0,
    batch_size: int = 64,
    progress: bool = False,
) -> CarrotRouter:
    """
    A new router with `name` added as the last candidate; `router` is left unchanged.

    Args:
        router: a trained kNN or MLP router.
        name: the new candidate's name (must not already be a candidate).
        table: a `RoutingTable` with scores (and output tokens) of the new model on some prompts;
            rows where its score is missing are ignored. Other columns are ignored too: the old
            candidates' predictions must not change.
        input_price, output_price: its prices in US dollars per million tokens.
        min_rows: least number of prompts with an observed score (default 50).
        column: the new model's column in `table` if it is not called `name`.
        embeddings: the table's prompt embeddings `(n_prompts, hidden)` from this router's encoder,
            to skip encoding.
        parent: Hub id of `router`, recorded as the card's `base_model` (default: where the router
            was loaded from, when that is a Hub id).

    Returns:
        The new [`CarrotRouter`] (save it with `save_pretrained`).
    """
    config = router.config
    if not isinstance(name, str) or not name.strip():
        raise CandidateError(f"The new candidate needs a non-empty name, got {name!r}.")
    if name in config.candidate_models:
        raise CandidateError(
            f"{name!r} is already a candidate of this router ({', '.join(config.candidate_models)}). "
            "Use set-prices to change its price, or remove it first to retrain it."
        )
    try:
        input_price = check_price(input_price, f"input price of {name!r}")
        output_price = check_price(output_price, f"output price of {name!r}")
    except ValueError as error:
        raise CandidateError(str(error)) from None
    column = column or name
    if column not in table.models:
        raise CandidateError(f"The routing table has no column {column!r}; it has {', '.join(table.models)}.")
    col = table.models.index(column)
    scores = table.scores[:, col].astype(np.float32)
    tokens = table.output_tokens[:, col].astype(np.float32)
    rows = np.flatnonzero(~np.isnan(scores))
    if len(rows) < min_rows:
        raise CandidateError(
            f"{name!r} has observed scores on {len(rows)} prompts of the table; at least {min_rows} are needed "
            "to estimate its quality (run it on more prompts, or lower min_rows knowingly)."
        )
    if np.any((scores[rows] < 0) | (scores[rows] > 1)):
        raise CandidateError(f"The scores of {column!r} must lie in [0, 1] (NaN = missing).")
    if np.any(tokens[~np.isnan(tokens)] < 0):
        raise CandidateError(f"The output tokens of {column!r} must be ≥ 0 (NaN = missing).")

    if embeddings is None:
        prompts = [table.prompts[i] for i in rows]
        new_embeddings = router.encode(prompts, batch_size=batch_size, progress=progress).embeddings
    else:
        embeddings = torch.as_tensor(np.asarray(embeddings), dtype=torch.float32)
        if embeddings.shape != (len(table), router.embedding_size):
            raise CandidateError(
                f"embeddings have shape {tuple(embeddings.shape)}, expected ({len(table)}, "
                f"{router.embedding_size}) — one per table row, from this router's encoder."
            )
        new_embeddings = embeddings[torch.as_tensor(rows)]
    quality = torch.from_numpy(scores[rows])
    output_tokens = torch.from_numpy(tokens[rows])

    state = {key: value.detach().clone() for key, value in router.state_dict().items()}
    if config.predictor_kind == "knn":
        new_keys = torch.tensor([prompt_key_of(table.prompts[i]) for i in rows], dtype=torch.int64)
        state.update(_knn_add(router.predictor, new_embeddings, quality, output_tokens, config.knn_remembered_rows,
                              new_keys if "predictor.prompt_keys" in state else None))
        memory_size = state["predictor.embeddings"].shape[0]
        detail = f"kNN memory {config.knn_memory_size} → {memory_size} prompts"
    else:
        state.update(_mlp_add(router, new_embeddings, quality, output_tokens, seed))
        memory_size = config.knn_memory_size
        detail = "new output row of each head fitted on frozen features; other weights unchanged"
    if router.reliability is not None:
        state.update(_reliability_add(router.reliability, quality))
    source = table.split and f"{table.split} split" or "a routing table"
    description = (
        f"added candidate {name} (${input_price:g} / ${output_price:g} per M tokens) from {len(rows)} prompts "
        f"({source}); {detail}"
    )
    new_config = _derived_config(
        router,
        candidate_models=[*config.candidate_models, name],
        input_price_per_million=[*config.input_price_per_million, input_price],
        output_price_per_million=[*config.output_price_per_million, output_price],
        knn_memory_size=memory_size,
        parent=parent,
        description=description,
    )
    return _rebuild(router, new_config, state)


@torch.no_grad()
def _knn_add(memory: CarrotKNNMemory, embeddings, quality, output_tokens, n_remembered: int = 0,
             prompt_keys: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """
    New memory buffers: old rows + new rows; old cells of the new column and new cells of old columns
    unobserved. The new rows are training rows: they go before the `n_remembered` rows that
    `remember()` added (the memory keeps remembered rows last, see `CarrotKNNMemory.append`).
    `prompt_keys (n_new,)`: the new rows' keys, for a memory that saves its rows' prompt keys.
    """
    n_old, n_models = memory.quality.shape
    n_new = embeddings.shape[0]
    n_training = n_old - n_remembered
    old_pad, new_pad = torch.zeros(n_old, 1), torch.zeros(n_new, n_models)
    tokens_observed = (~torch.isnan(output_tokens)).float()[:, None]
    log_tokens = torch.log1p(torch.nan_to_num(output_tokens, nan=0.0).clamp(min=0))[:, None]

    def stack(old, new_column):
        old = torch.cat([old, old_pad], 1)
        return torch.cat([old[:n_training], torch.cat([new_pad, new_column], 1), old[n_training:]], 0).contiguous()

    old_embeddings = memory.embeddings
    keys = {}
    if prompt_keys is not None:
        old_keys = memory.prompt_keys
        keys["predictor.prompt_keys"] = torch.cat([old_keys[:n_training], prompt_keys, old_keys[n_training:]]).contiguous()
    return {
        **keys,
        "predictor.embeddings": torch.cat(
            [old_embeddings[:n_training], embeddings.float(), old_embeddings[n_training:]], 0
        ).contiguous(),
        "predictor.quality": stack(memory.quality, quality[:, None].float()),
        "predictor.quality_observed": stack(memory.quality_observed, torch.ones(n_new, 1)),
        "predictor.log_output_tokens": stack(memory.log_output_tokens, log_tokens),
        "predictor.output_tokens_observed": stack(memory.output_tokens_observed, tokens_observed),
    }


@torch.no_grad()
def _reliability_add(reliability, quality) -> dict[str, torch.Tensor]:
    """The newcomer's reliability rows: no calibration (identity), its mean score as prior, the others' mean spreads."""
    n_knots = reliability.calibration_x.shape[1]
    identity = torch.linspace(0, 1, n_knots)[None, :]
    observed = quality[~torch.isnan(quality)].float()
    prior = observed.mean() if observed.numel() else torch.tensor(0.5)
    return {
        "reliability.calibration_x": torch.cat([reliability.calibration_x, identity], 0).contiguous(),
        "reliability.calibration_y": torch.cat([reliability.calibration_y, identity], 0).contiguous(),
        "reliability.prior": torch.cat([reliability.prior, prior.reshape(1)]).contiguous(),
        "reliability.spread_in": torch.cat([reliability.spread_in, reliability.spread_in.mean().reshape(1)]).contiguous(),
        "reliability.spread_out": torch.cat([reliability.spread_out, reliability.spread_out.mean().reshape(1)]).contiguous(),
    }


@torch.no_grad()
def _mlp_add(router, embeddings, quality, output_tokens, seed) -> dict[str, torch.Tensor]:
    """Append one fitted output row to the last Linear of each head; every other weight is untouched."""
    heads = router.predictor
    was_training = heads.training
    heads.eval()
    embeddings = embeddings.to(next(heads.parameters()).dtype)
    quality_features = heads.quality[:2](embeddings).float()  # Linear → GELU, (n, hidden)
    token_features = heads.log_output_tokens[:2](embeddings).float()
    heads.train(was_training)
    generator = torch.Generator().manual_seed(seed)

    q_weight, q_bias = _fit_logistic(quality_features, quality.float(), generator)
    observed = ~torch.isnan(output_tokens)
    if int(observed.sum()) >= 2:
        target = torch.log1p(output_tokens[observed].clamp(min=0)).float()
        t_weight, t_bias = _fit_ridge(token_features[observed], target, generator)
    else:  # no token counts: predict the other candidates' mean head output
        t_weight = heads.log_output_tokens[-1].weight.float().mean(0)
        t_bias = heads.log_output_tokens[-1].bias.float().mean()
    out = {}
    for prefix, layer, weight, bias in (
        ("predictor.quality", heads.quality[-1], q_weight, q_bias),
        ("predictor.log_output_tokens", heads.log_output_tokens[-1], t_weight, t_bias),
    ):
        index = len(heads.quality) - 1
        out[f"{prefix}.{index}.weight"] = torch.cat([layer.weight, weight[None].to(layer.weight.dtype)], 0)
        out[f"{prefix}.{index}.bias"] = torch.cat([layer.bias, bias.reshape(1).to(layer.bias.dtype)], 0)
    return out


def _split(n: int, generator) -> tuple[torch.Tensor, torch.Tensor]:
    order = torch.randperm(n, generator=generator)
    n_val = max(1, int(round(n * VALIDATION_FRACTION)))
    return order[n_val:], order[:n_val]


def _fit_logistic(features, targets, generator) -> tuple[torch.Tensor, torch.Tensor]:
    """L2 logistic regression (soft targets in [0, 1]); the L2 strength minimises validation BCE."""
    train, val = _split(features.shape[0], generator)
    best = min(L2_GRID, key=lambda l2: _bce(*_logistic(features[train], targets[train], l2), features[val], targets[val]))
    return _logistic(features, targets, best)


def _logistic(features, targets, l2) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.enable_grad():
        weight = torch.zeros(features.shape[1], requires_grad=True)
        bias = torch.zeros((), requires_grad=True)
        optimizer = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=100, line_search_fn="strong_wolfe")

        def closure():
            optimizer.zero_grad()
            loss = F.binary_cross_entropy_with_logits(features @ weight + bias, targets) + l2 * weight.square().sum()
            loss.backward()
            return loss

        optimizer.step(closure)
    return weight.detach(), bias.detach()


def _bce(weight, bias, features, targets) -> float:
    return float(F.binary_cross_entropy_with_logits(features @ weight + bias, targets))


def _fit_ridge(features, targets, generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Ridge regression with an unpenalised intercept; the L2 strength minimises validation MSE."""
    train, val = _split(features.shape[0], generator)

    def mse(l2):
        weight, bias = _ridge(features[train], targets[train], l2)
        return float(((features[val] @ weight + bias - targets[val]) ** 2).mean())

    return _ridge(features, targets, min(L2_GRID, key=mse))


def _ridge(features, targets, l2) -> tuple[torch.Tensor, torch.Tensor]:
    x = features.double()
    mean_x, mean_y = x.mean(0), targets.double().mean()
    xc, yc = x - mean_x, targets.double() - mean_y
    gram = xc.T @ xc + l2 * x.shape[0] * torch.eye(x.shape[1], dtype=torch.float64)
    weight = torch.linalg.solve(gram, xc.T @ yc)
    return weight.float(), (mean_y - mean_x @ weight).float()


# ----------------------------------------------------------------------------------- remove


def remove_candidate(router: CarrotRouter, name: str, parent: str | None = None) -> CarrotRouter:
    """
    A new router without candidate `name`; the others' predictions are unchanged. kNN memory rows
    observed for no remaining candidate are dropped. `router` is left unchanged.
    """
    config = router.config
    if name not in config.candidate_models:
        raise CandidateError(f"{name!r} is not a candidate of this router; its candidates are {', '.join(config.candidate_models)}.")
    if config.num_candidates == 1:
        raise CandidateError(f"{name!r} is the router's only candidate; a router needs at least one.")
    col = config.candidate_models.index(name)
    keep = [i for i in range(config.num_candidates) if i != col]
    state = {key: value.detach().clone() for key, value in router.state_dict().items()}
    memory_size = config.knn_memory_size
    if config.predictor_kind == "knn":
        memory = router.predictor
        observed = (memory.quality_observed[:, keep] > 0) | (memory.output_tokens_observed[:, keep] > 0)
        rows = observed.any(1).nonzero().squeeze(1)
        remembered_rows = int((rows >= memory_size - config.knn_remembered_rows).sum())
        for buffer in ("quality", "quality_observed", "log_output_tokens", "output_tokens_observed"):
            state[f"predictor.{buffer}"] = getattr(memory, buffer)[rows][:, keep].contiguous()
        state["predictor.embeddings"] = memory.embeddings[rows].contiguous()
        if "predictor.prompt_keys" in state:
            state["predictor.prompt_keys"] = memory.prompt_keys[rows].contiguous()
        memory_size = int(rows.numel())
        detail = f"kNN memory {config.knn_memory_size} → {memory_size} prompts"
    else:
        remembered_rows = config.knn_remembered_rows
        index = len(router.predictor.quality) - 1
        for prefix in ("predictor.quality", "predictor.log_output_tokens"):
            for part in ("weight", "bias"):
                key = f"{prefix}.{index}.{part}"
                state[key] = state[key][keep].contiguous()
        detail = "its output row removed from each head"
    if router.reliability is not None:
        for buffer in ("calibration_x", "calibration_y", "prior", "spread_in", "spread_out"):
            state[f"reliability.{buffer}"] = getattr(router.reliability, buffer)[keep].contiguous()
    ood_policy = config.ood_policy
    if ood_policy == f"model:{name}":
        ood_policy = "predict"
        detail += f"; its ood policy {config.ood_policy!r} fell back to 'predict'"
    new_config = _derived_config(
        router,
        candidate_models=[config.candidate_models[i] for i in keep],
        input_price_per_million=[config.input_price_per_million[i] for i in keep],
        output_price_per_million=[config.output_price_per_million[i] for i in keep],
        knn_memory_size=memory_size,
        knn_remembered_rows=remembered_rows,
        ood_policy=ood_policy,
        parent=parent,
        description=f"removed candidate {name}; {detail}",
    )
    return _rebuild(router, new_config, state)


# ---------------------------------------------------------------------------------- helpers


def _parent_of(router: CarrotRouter, parent: str | None) -> str | None:
    """The Hub id the router came from: `parent`, else its name_or_path when that is a Hub id."""
    if parent:
        return parent
    source = str(getattr(router, "name_or_path", "") or "")
    if source and not os.path.exists(source) and source.count("/") == 1 and " " not in source:
        return source
    return getattr(router.config, "parent_router", None)


def _derived_config(router, parent, description, **fields) -> CarrotConfig:
    config_dict = router.config.to_dict()
    for key in ("auto_map", "architectures", "_name_or_path", "transformers_version"):
        config_dict.pop(key, None)
    parent = _parent_of(router, parent)
    changes = list(getattr(router.config, "router_changes", None) or [])
    if parent != getattr(router.config, "parent_router", None):
        changes = []  # the log lists the changes relative to the (new) parent only
    changes.append({"date": datetime.date.today().isoformat(), "description": description})
    config_dict.update(fields, parent_router=parent, router_changes=changes)
    try:
        return CarrotConfig(**config_dict)
    except ValueError as error:
        raise CandidateError(str(error)) from None


def _rebuild(router: CarrotRouter, config: CarrotConfig, state: dict) -> CarrotRouter:
    new_router = CarrotRouter(config)
    new_router.load_state_dict(state, strict=True)
    new_router.to(router.device)
    new_router.eval()
    new_router.set_tokenizer(router.tokenizer)
    new_router.check_consistency(source="the derived router")
    return new_router


def save_derived_router(router: CarrotRouter, folder: str | os.PathLike, overwrite: bool = False) -> Path:
    """
    Save a derived router (and its model card) the way training saves one: whole or not at all
    (temporary folder, then one move), so that `--output` equal to the source router with
    `--overwrite` never leaves it half-written, and never over a folder that holds no router.
    """
    try:
        return save_router_atomically(router, folder, overwrite=overwrite)
    except FileExistsError as error:
        raise CandidateError(str(error)) from None


# ---------------------------------------------------------------------------------------- CLI


def add_add_model_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Arguments of `carrot add-model`."""
    parser.add_argument("router", help="router folder or Hub id")
    parser.add_argument("name", help="name of the new candidate model")
    parser.add_argument("data", help="routing data with the new model's scores and tokens (folder, files or Hub id)")
    parser.add_argument("--input-price", type=float, required=True, help="US dollars per million prompt tokens")
    parser.add_argument("--output-price", type=float, required=True, help="US dollars per million output tokens")
    parser.add_argument("--output", required=True, help="new folder for the derived router")
    parser.add_argument("--split", default="train", help="split of the data to use (default train)")
    parser.add_argument("--column", help="the model's column in the data if not NAME")
    parser.add_argument("--min-rows", type=int, default=MIN_ROWS, help=f"least observed prompts (default {MIN_ROWS})")
    parser.add_argument("--parent", help="Hub id of the router, recorded as the card's base_model")
    parser.add_argument("--overwrite", action="store_true", help="allow writing into a non-empty folder")
    return parser


def run_add_model(args: argparse.Namespace) -> int:
    from carrot_hub.data import load_routing_table

    router = CarrotRouter.from_pretrained(args.router)
    table = load_routing_table(args.data, split=args.split, progress=True)
    new_router = add_candidate(
        router, args.name, table, args.input_price, args.output_price, min_rows=args.min_rows,
        column=args.column, parent=args.parent, progress=True,
    )
    folder = save_derived_router(new_router, args.output, overwrite=args.overwrite)
    print(f"Added {args.name!r}: {new_router.config.num_candidates} candidates, saved to {folder}.")
    print("Re-run `carrot evaluate` on it before publishing: the old evaluation does not cover the new candidate.")
    return 0


def add_remove_model_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Arguments of `carrot remove-model`."""
    parser.add_argument("router", help="router folder or Hub id")
    parser.add_argument("name", help="candidate to remove")
    parser.add_argument("--output", required=True, help="new folder for the derived router")
    parser.add_argument("--parent", help="Hub id of the router, recorded as the card's base_model")
    parser.add_argument("--overwrite", action="store_true", help="allow writing into a non-empty folder")
    return parser


def run_remove_model(args: argparse.Namespace) -> int:
    router = CarrotRouter.from_pretrained(args.router)
    new_router = remove_candidate(router, args.name, parent=args.parent)
    folder = save_derived_router(new_router, args.output, overwrite=args.overwrite)
    print(f"Removed {args.name!r}: {new_router.config.num_candidates} candidates left, saved to {folder}.")
    return 0


__all__ = [
    "MIN_ROWS",
    "CandidateError",
    "add_candidate",
    "remove_candidate",
    "save_derived_router",
    "add_add_model_arguments",
    "run_add_model",
    "add_remove_model_arguments",
    "run_remove_model",
]
