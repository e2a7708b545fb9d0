"""One routing-options object: resolved and checked once by the router, used as is by route()/decide(),
calibration and the gateway; `PromptPredictions.select` keeps every field."""

import ast
import dataclasses
from pathlib import Path

import pytest
import torch

from carrot_hub.budget import Calibrator
from carrot_hub.modeling_carrot import RoutingOptionError, RoutingOptions

from .conftest import TINY_PROMPTS

PACKAGE = Path(__file__).parents[1] / "carrot_hub"


def test_options_are_resolved_once_frozen_and_hashable(knn_router):
    options = knn_router.routing_options(mu=0.3, prices={"small-model": {"input": 99.0}}, allowed=["small-model", "big-model"])
    assert options.mu == 0.3 and options.ood == knn_router.config.ood_policy
    assert options.allowed == ("big-model", "small-model")  # column order
    assert options.prices["small-model"] == {"input": 99.0, "output": 0.1}
    assert options == knn_router.routing_options(mu=0.3, prices={"small-model": (99.0, None)}, allowed=["big-model", "small-model"])
    assert len({options, knn_router.routing_options(mu=0.3, prices={"small-model": {"input": 99.0}},
                                                    allowed=["big-model", "small-model"])}) == 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.mu = 0.5


@pytest.mark.parametrize("mu, prices, allowed, max_cost, ood", [
    (None, None, None, None, None),
    (0.0, None, ["mid-model", "small-model"], None, "prior"),
    (1.0, {"big-model": {"input": 0.0, "output": 0.0}}, None, 1e-5, "predict"),
])
def test_route_and_decide_with_options_are_route_with_the_values(knn_router, mu, prices, allowed, max_cost, ood):
    values = dict(mu=mu, prices=prices, allowed=allowed, max_cost=max_cost, ood=ood)
    options = knn_router.routing_options(**values)
    direct, with_options = knn_router.route(TINY_PROMPTS, **values), knn_router.route(TINY_PROMPTS, options=options)
    assert direct.models == with_options.models and direct.prices == with_options.prices
    assert torch.equal(direct.utility, with_options.utility) and with_options.options == options
    decided = knn_router.decide(knn_router.predict(TINY_PROMPTS), options=options)
    assert decided.models == direct.models


@pytest.mark.parametrize("values, option", [
    ({"mu": 1.5}, "mu"), ({"prices": {"gpt-17": {"input": 1.0}}}, "prices"), ({"allowed": ["gpt-17"]}, "allowed"),
    ({"max_cost": -1}, "max_cost"), ({"ood": "model:gpt-17"}, "ood"),
    ({"ood": "model:big-model", "allowed": ["small-model"]}, "ood"),
])
def test_a_refused_option_is_named(knn_router, values, option):
    with pytest.raises(RoutingOptionError) as error:
        knn_router.routing_options(**values)
    assert error.value.option == option and isinstance(error.value, ValueError)


def test_options_and_separate_values_are_not_mixed_and_options_fit_one_router(knn_router):
    options = knn_router.routing_options(mu=0.2)
    with pytest.raises(ValueError, match="not both"):
        knn_router.route(TINY_PROMPTS, mu=0.5, options=options)
    foreign = dataclasses.replace(options, candidate_models=("a", "b", "c"))
    with pytest.raises(ValueError, match="this router's routing_options"):
        knn_router.decide(knn_router.predict(TINY_PROMPTS), options=foreign)


def test_calibration_takes_the_options(knn_router):
    predictions = knn_router.predict(TINY_PROMPTS)
    options = knn_router.routing_options(allowed=["mid-model", "small-model"], max_cost=1e-3)
    by_options = Calibrator.from_predictions(knn_router, predictions, options=options)
    by_values = Calibrator.from_predictions(knn_router, predictions, allowed=["mid-model", "small-model"], max_cost=1e-3)
    assert by_options.curve([0.0, 0.5, 1.0]) == by_values.curve([0.0, 0.5, 1.0])


def test_select_keeps_every_field(static_knn_router):
    predictions = static_knn_router.predict([*TINY_PROMPTS, "🙂🙂"])
    rows = [6, 2, 0]
    picked = predictions.select(rows)
    for field in dataclasses.fields(predictions):
        value, chosen = getattr(predictions, field.name), getattr(picked, field.name)
        if isinstance(value, torch.Tensor):
            assert torch.equal(chosen, value[rows]), field.name
        elif field.name == "candidate_models":
            assert chosen == value
        else:
            assert chosen == [value[row] for row in rows], field.name
    assert picked.fallback_embedding == [True, False, False]
    mask = torch.zeros(len(predictions), dtype=torch.bool)
    mask[[0, 2]] = True
    assert torch.equal(predictions.select(mask).quality, predictions.quality[[0, 2]])
    assert static_knn_router.decide(picked).models == [static_knn_router.decide(predictions).models[row] for row in rows]


def test_one_class_named_routing_options_and_nobody_resolves_privately():
    classes, private = [], []
    for path in PACKAGE.rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        classes += [path.name for node in ast.walk(tree) if isinstance(node, ast.ClassDef) and node.name == "RoutingOptions"]
        private += [path.name for node in ast.walk(tree) if isinstance(node, ast.Attribute) and node.attr == "_resolve_options"]
    assert classes == ["decision_carrot.py"] and private == []
    assert RoutingOptions.__module__.endswith("decision_carrot")
