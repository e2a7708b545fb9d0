"""Checks a routing table must pass before any router is trained on it, and the shared set-up."""

from __future__ import annotations

import logging

import numpy as np

from carrot_hub.building import default_cost_scale, new_router

logger = logging.getLogger(__name__)


def check_training_table(table, drop_unscored_models: bool = False):
    """
    Return `table` fit for training, or raise `ValueError` with a one-line reason.

    A router needs at least two candidates, a price for each, and for each candidate at least one
    observed score and one observed output-token count. A candidate with no observed score is an
    error naming it (a router cannot learn anything about it), unless `drop_unscored_models` is
    True, in which case it is dropped with a warning.
    """
    if len(table) == 0:
        raise ValueError("The routing table has no prompts: there is nothing to train on.")
    unscored = [m for m, seen in zip(table.models, (~np.isnan(table.scores)).any(axis=0)) if not seen]
    if unscored and drop_unscored_models:
        logger.warning("Dropping candidates with no observed score: %s", ", ".join(unscored))
        table = table.select_models([m for m in table.models if m not in unscored])
    elif unscored:
        raise ValueError(
            f"Every score of {', '.join(map(repr, unscored))} is missing: the router cannot learn when "
            "it is right. Add its results, remove it from the data, or pass drop_unscored_models=True "
            "(--drop-unscored-models) to leave it out."
        )
    if len(table.models) < 2:
        raise ValueError(
            f"Routing needs at least two candidate models; this table has {len(table.models)} "
            f"({', '.join(table.models) or 'none'}). Add results of another model."
        )
    no_tokens = [m for m, seen in zip(table.models, (~np.isnan(table.output_tokens)).any(axis=0)) if not seen]
    if no_tokens:
        raise ValueError(
            f"Every output-token count of {', '.join(map(repr, no_tokens))} is missing: the router cannot "
            "predict its cost. Add the token counts (or the responses) to the data."
        )
    if table.prices is None:
        raise ValueError("The routing table has no price table: give prices {model: {'input': $/M, 'output': $/M}}.")
    unpriced = [m for m in table.models if m not in table.prices]
    if unpriced:
        raise ValueError(f"The price table has no entry for {', '.join(map(repr, unpriced))}.")
    return table


def training_data_label(table) -> str | None:
    """What the router card calls the training data: the table's title, source and split when known."""
    from carrot_hub.data.packaged import table_name

    metadata = table.metadata if isinstance(table.metadata, dict) else {}
    source, title = metadata.get("source"), metadata.get("title")
    if title and source:
        return f"{title} ({table_name(source)}, {table.split or 'all'} split)"
    if source and table.split:
        return f"{source} ({table.split})"
    return source or table.split


def table_card_fields(table) -> dict:
    """The config fields a router's card takes from its training table: price date and source, caveats."""
    metadata = table.metadata if isinstance(table.metadata, dict) else {}
    return {
        "prices_recorded_on": metadata.get("prices_recorded_on"),
        "prices_source": metadata.get("prices_source"),
        "training_data_caveats": list(metadata.get("caveats") or []),
    }


def new_training_router(train_table, predictor_kind: str, encoder=None, cost_scale=None, **config_fields):
    """
    A fresh router for a checked `train_table`: its candidates and prices, `cost_scale` derived from
    the table unless given. `config_fields` may hold `new_router`'s encoder options (`encoder_kind`,
    `static_dimensions`, `static_vocabulary`) next to `CarrotConfig` fields.
    """
    cost_scale = float(cost_scale) if cost_scale is not None else default_cost_scale(train_table)
    for name, value in table_card_fields(train_table).items():
        config_fields.setdefault(name, value)
    return new_router(
        train_table.models,
        train_table.prices,
        encoder=encoder,
        predictor_kind=predictor_kind,
        cost_scale=cost_scale,
        training_data=training_data_label(train_table),
        **config_fields,
    )


def load_benchmark_tables(name: str, source: str, train_split: str, test_split: str, progress: bool):
    """Train and test tables of one source, same models in the same order, every model priced."""
    from carrot_hub.data import load_routing_table

    train = load_routing_table(source, split=train_split, progress=progress)
    test = load_routing_table(source, split=test_split, progress=progress)
    if list(test.models) != list(train.models):
        if set(test.models) != set(train.models):
            raise ValueError(
                f"The {train_split} and {test_split} splits of {name} have different models: "
                f"{train.models} vs {test.models}."
            )
        test = test.select_models(train.models)
    for table in (train, test):
        unpriced = [m for m in table.models if not table.prices or m not in table.prices]
        if unpriced:
            raise ValueError(
                f"The prices of table {name} do not cover {', '.join(unpriced)}: add them to its prices.json "
                "(US$ per million input and output tokens), or remove those models from the data."
            )
    return train, test
