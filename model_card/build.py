"""
Build a router's README.md model card from its config, its evaluation results and its lineage.

The card text lives in `template.md` (Jinja2, rendered by `huggingface_hub.ModelCard.from_template`);
this module only computes the values that fill it and the YAML metadata the Hub reads.
"""

from __future__ import annotations

import datetime
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData

TEMPLATE_PATH = Path(__file__).with_name("template.md")
DEFAULT_TAGS = ("llm-routing", "carrot", "router", "cost-aware", "model-selection")
# Metric ids in model-index, and how the card names them.
METRICS = {
    "aiq": "AIQ (RouterBench average improvement in quality)",
    "quality_mu0": "quality at μ = 0",
    "cost_to_match_best": "cost to match the best single model (fraction of its cost)",
}
TASK_TYPE = "llm-routing"
TASK_NAME = "Cost-aware LLM routing"


def load_eval_results(source: str | os.PathLike | Mapping | None) -> dict | None:
    """An evaluation JSON (path or already-loaded dict) as a dict; a clear error when unreadable."""
    if source is None or isinstance(source, Mapping):
        return None if source is None else dict(source)
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"Evaluation results {path} do not exist; run `carrot evaluate` first or leave them out.")
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"Evaluation results {path} are not valid JSON ({error.msg} at line {error.lineno}).") from None
    if not isinstance(document, dict):
        raise ValueError(f"Evaluation results {path} must hold a JSON object, not {type(document).__name__}.")
    return document


def _router_entry(results: Mapping, router_key: str | None) -> dict:
    """The metrics of the router being published inside an evaluation JSON.

    Accepts `{"routers": {name: {...}}}` (pick `router_key`, else the only one, else the first whose
    name starts with "carrot") or a flat `{"aiq": ..., ...}`.
    """
    routers = results.get("routers")
    if isinstance(routers, Mapping) and routers:
        if router_key is not None:
            if router_key not in routers:
                raise ValueError(f"The evaluation results have no router {router_key!r}; they have {sorted(routers)}.")
            return dict(routers[router_key])
        if len(routers) == 1:
            return dict(next(iter(routers.values())))
        carrot = [name for name in routers if str(name).lower().startswith("carrot")]
        if len(carrot) != 1:
            raise ValueError(
                f"The evaluation results hold several routers {sorted(routers)}; name the one being published."
            )
        return dict(routers[carrot[0]])
    if any(key in results for key in METRICS):
        return {key: results[key] for key in METRICS if key in results}
    raise ValueError("The evaluation results have neither a 'routers' entry nor aiq/quality_mu0/cost_to_match_best.")


def _eval_split(results: Mapping) -> str:
    """The split the results were measured on: `split`, or `data.split` as `carrot evaluate` writes it."""
    return str(results.get("split") or (results.get("data") or {}).get("split") or "test")


def _finite(value) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _eval_results(
    config, results: Mapping | None, router_key: str | None, model_name: str, default_dataset: str | None = None
) -> list[EvalResult]:
    if not results:
        return []
    entry = _router_entry(results, router_key)
    # `carrot evaluate` records a local path in data.source: the card names the Hub data set given for it.
    dataset_id = results.get("dataset_id") or results.get("dataset") or default_dataset or "unknown"
    dataset_name = results.get("dataset_name") or str(dataset_id)
    split = _eval_split(results)
    evals = []
    for key in METRICS:
        value = _finite(entry.get(key))
        if value is None:
            continue
        evals.append(
            EvalResult(
                task_type=TASK_TYPE,
                task_name=TASK_NAME,
                dataset_type=str(dataset_id),
                dataset_name=dataset_name,
                dataset_split=split,
                metric_type=key,
                metric_name=METRICS[key],
                metric_value=round(value, 5),
            )
        )
    return evals


def card_metadata(
    config,
    eval_results: Mapping | None = None,
    parent: str | None = None,
    encoder_id: str | None = None,
    datasets: Sequence[str] | None = None,
    license: str = "mit",
    router_key: str | None = None,
    model_name: str = "carrot-router",
    extra_tags: Sequence[str] | None = None,
) -> ModelCardData:
    """
    The card's YAML metadata.

    `base_model` is the parent router for a community fine-tune, else the sentence encoder. There is
    no `pipeline_tag`: a router's output depends on μ and on prices, which no Hub widget or
    Inference API task can pass, and a wrong tag would make the Hub offer a widget that fails.
    """
    encoder_id = encoder_id or getattr(config, "encoder_name", None)
    parent = parent or getattr(config, "parent_router", None)
    base_model = parent or encoder_id
    tags = list(DEFAULT_TAGS) + [f"predictor-{config.predictor_kind}"]
    tags += [tag for tag in extra_tags or () if tag not in tags]
    if datasets is None and eval_results and (eval_results.get("dataset_id") or eval_results.get("dataset")):
        datasets = [eval_results.get("dataset_id") or eval_results.get("dataset")]
    return ModelCardData(
        library_name="transformers",
        license=license,
        tags=tags,
        base_model=base_model,
        datasets=list(datasets) if datasets else None,
        model_name=model_name,
        eval_results=_eval_results(config, eval_results, router_key, model_name, (datasets or [None])[0]) or None,
    )


def _first_clause(text: str) -> str:
    """`text` up to its first comma outside parentheses ("Data (a, b), train split" → "Data (a, b)")."""
    depth = 0
    for index, char in enumerate(text):
        depth += {"(": 1, ")": -1}.get(char, 0)
        if char == "," and depth <= 0:
            return text[:index]
    return text


def _price_text(value: float) -> str:
    return f"{value:g}"


def _predictor_description(config) -> str:
    if config.predictor_kind == "knn":
        return (
            f"CARROT-KNN — mean score and output tokens of the {config.knn_k} nearest training prompts "
            f"(cosine), among the {config.knn_memory_size} stored, per candidate over its observed prompts"
        )
    return (
        f"MLP heads on the frozen encoder — a hidden layer of {config.head_hidden_size} units, one head "
        "for the probability of a good answer (sigmoid), one for log(1 + output tokens)"
    )


def _encoder_description(config, encoder_id: str | None) -> str:
    name = f"[{encoder_id}](https://huggingface.co/{encoder_id}) " if encoder_id else ""
    if getattr(config, "encoder_kind", "transformer") == "static":
        return (
            f"a static token table distilled from {name}with model2vec ({config.static_vocab_size} tokens × "
            f"{config.static_embedding_size} dimensions, mean-pooled and L2-normalised; no attention, so a prompt "
            "costs about as much as tokenizing it; table included in `model.safetensors`, model2vec not needed "
            "to route)"
        )
    encoder = config.encoder_config or {}
    shape = (
        f"{encoder.get('model_type', 'bert')}, {encoder.get('num_hidden_layers', '?')} layers, "
        f"{encoder.get('hidden_size', '?')}-dimensional mean-pooled, L2-normalised embeddings"
    )
    return f"{name}({shape}; weights included in `model.safetensors`)"


def _hyperparameters(config) -> list[dict]:
    items = []
    if config.predictor_kind == "knn":
        items += [("k (neighbours)", config.knn_k), ("prompts in memory", config.knn_memory_size)]
    else:
        items += [("head hidden size", config.head_hidden_size), ("head dropout", config.head_dropout)]
    items += [("max prompt tokens", config.max_prompt_tokens), ("cost_scale ($)", f"{config.cost_scale:.6g}")]
    extra = getattr(config, "training_hyperparameters", None)
    if isinstance(extra, Mapping):
        items += sorted((str(k), v) for k, v in extra.items())
    return [{"name": name, "value": value} for name, value in items]


def _reliability_context(config) -> dict | None:
    """What the card says about support, the threshold, calibration and the ood policy (None: saved before support)."""
    if not getattr(config, "has_support", False):
        return None
    threshold = config.support_threshold
    floor = config.shrink_floor
    return {
        "support_k": config.support_k,
        "threshold": f"{threshold:g}",
        "threshold_percent": f"{threshold:.1%}",
        "complement_percent": f"{1 - threshold:.1%}",
        "memory": "its kNN memory" if config.predictor_kind == "knn" else f"{config.support_memory_size} stored training-prompt embeddings",
        "calibration": {
            "isotonic": "isotonic regression", "platt": "Platt scaling", "identity": "none (the out-of-fold predictions were best as they are)",
        }.get(config.calibration_method or "identity", config.calibration_method),
        "floor": f"{floor:g}",
        "prior_shrink": f"{config.prior_shrink:g}",
        "pessimism": f"{getattr(config, 'ood_pessimism', 0.0):g}",
        "pessimism_support": f"{getattr(config, 'ood_pessimism_support', threshold):g}",
        "ood_policy": config.ood_policy,
    }


def _metric_rows(entry: Mapping) -> list[dict]:
    rows = []
    for key, label in METRICS.items():
        value = _finite(entry.get(key))
        if value is None:
            continue
        text = f"{value:.1%}" if key == "cost_to_match_best" else f"{value:.4f}"
        rows.append({"label": label, "text": text})
    return rows


def _baseline_rows(results: Mapping) -> list[dict]:
    rows = []
    for key, label in (("best_single", "best single model"), ("oracle", "oracle"), ("zero_router", "zero router")):
        entry = results.get(key)
        if not isinstance(entry, Mapping):
            continue
        quality = _finite(entry.get("quality"))
        cost = _finite(entry.get("cost"))
        name = entry.get("model")
        if quality is None and _finite(entry.get("aiq")) is not None:
            rows.append({"label": f"{label} (AIQ)", "quality": f"{float(entry['aiq']):.4f}", "cost": "—"})
            continue
        if quality is None:
            continue
        rows.append(
            {
                "label": f"{label} ({name})" if name else label,
                "quality": f"{quality:.4f}",
                "cost": f"{cost:.6f}" if cost is not None else "—",
            }
        )
    return rows


def build_model_card(
    router,
    eval_results: str | os.PathLike | Mapping | None = None,
    plot_filename: str | None = None,
    parent: str | None = None,
    changes: Sequence[Mapping | str] | None = None,
    repo_id: str | None = None,
    encoder_id: str | None = None,
    datasets: Sequence[str] | None = None,
    license: str = "mit",
    router_key: str | None = None,
    card_date: str | None = None,
    tags: Sequence[str] | None = None,
) -> str:
    """
    The README.md of a router (a `CarrotRouter` or its `CarrotConfig`), YAML metadata included.

    Args:
        eval_results: an evaluation JSON (path or dict) with the router's `aiq`, `quality_mu0`,
            `cost_to_match_best`, the `split` they were measured on and optional baselines.
        plot_filename: the cost–quality PNG's name *inside the repo* (uploaded next to the card).
        parent: the Hub id of the router this one was derived from (else `config.parent_router`).
        changes: what changed from the parent, as strings or `{"date", "description"}` (else
            `config.router_changes`).
        repo_id: where the card will live (for the code snippets).
        encoder_id: the encoder's Hub id (else `config.encoder_name`).
        card_date: the date for changes given without one (defaults to today).
        tags: Hub tags added to the card's own.
    """
    config = getattr(router, "config", router)
    results = load_eval_results(eval_results)
    card_date = card_date or datetime.date.today().isoformat()
    parent = parent or getattr(config, "parent_router", None)
    encoder_id = encoder_id or getattr(config, "encoder_name", None)
    if changes is None:
        changes = getattr(config, "router_changes", None) or []
    changes = [
        {"date": card_date, "description": str(c)} if not isinstance(c, Mapping) else
        {"date": c.get("date") or card_date, "description": c.get("description", "")}
        for c in changes
    ]
    model_name = repo_id.split("/")[-1] if repo_id else "carrot-router"
    data = card_metadata(
        config, results, parent=parent, encoder_id=encoder_id, datasets=datasets, license=license,
        router_key=router_key, model_name=model_name, extra_tags=tags,
    )
    entry = _router_entry(results, router_key) if results else {}
    training_data = config.training_data or "not recorded"
    names = config.candidate_models
    context = {
        "title": model_name,
        "n_candidates": len(names),
        "predictor_description": _predictor_description(config),
        "predictor_kind": config.predictor_kind,
        "encoder_description": _encoder_description(config, encoder_id),
        "static_encoder": getattr(config, "encoder_kind", "transformer") == "static",
        "quality_target": config.quality_target,
        "cost_scale_text": f"{config.cost_scale:.6g}",
        "cost_scale_words": (
            "At μ = 0.5 the router pays up to this many dollars more for a prompt in exchange for one "
            "full point of expected quality (e.g. certainty of a right answer instead of certainty of "
            "a wrong one)."
        ),
        "default_mu": config.default_mu,
        "parent": parent,
        "prices_recorded_on": config.prices_recorded_on,
        "prices_source": getattr(config, "prices_source", None),
        "data_caveats": list(getattr(config, "training_data_caveats", None) or []),
        "price_rows": [
            {"name": name, "input": _price_text(p_in), "output": _price_text(p_out),
             "cached_input": "—" if p_cached is None else _price_text(p_cached)}
            for name, p_in, p_out, p_cached in zip(
                names, config.input_price_per_million, config.output_price_per_million,
                getattr(config, "cached_input_price_per_million", None) or [None] * len(names))
        ],
        "has_cached_prices": any(p is not None for p in getattr(config, "cached_input_price_per_million", None) or []),
        "changes": changes,
        "repo_id": repo_id or "<org>/<router>",
        "example_model": names[0] if names else "model-name",
        "metrics": _metric_rows(entry),
        "baselines": _baseline_rows(results) if results else [],
        "eval_split": _eval_split(results or {}),
        "eval_dataset_name": (results or {}).get("dataset_name") or (results or {}).get("dataset") or "the evaluation data",
        "eval_n_prompts": (results or {}).get("n_prompts") or ((results or {}).get("data") or {}).get("n_prompts"),
        "eval_prices_note": (results or {}).get("prices_note"),
        "plot_filename": plot_filename,
        "training_data": training_data,
        "training_data_short": _first_clause(training_data) if training_data else "unknown",
        "hyperparameters": _hyperparameters(config),
        "max_prompt_tokens": config.max_prompt_tokens,
        "reliability": _reliability_context(config),
    }
    card = ModelCard.from_template(data, template_path=str(TEMPLATE_PATH), **context)
    return str(card)
