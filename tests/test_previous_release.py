"""Routers saved by the previous release (one `modeling_carrot.py`, before the flat siblings) still
load and route identically with today's code: through the registered classes, and, once re-saved,
as remote code in a fresh process without carrot_hub."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoModel

from carrot_hub import CarrotRouter
from carrot_hub.hub_code import PACKAGE_DIR, code_files, package_code_files

from .conftest import TINY_PROMPTS
from .hidden_package import run_without_carrot_hub

PREVIOUS_RELEASE = Path(__file__).parent / "previous_release"  # commit a719848's two Hub files, verbatim
MUS = (0.0, 0.3, 1.0)

# Loads a router folder with its own remote code, routes, prints what it decided (and, with
# `save_to`, saves the router with that code first and routes the saved copy).
ROUTE_WITH_REMOTE_CODE = """
import json
from transformers import AutoModel
router = AutoModel.from_pretrained({folder!r}, trust_remote_code=True)
if {save_to!r}:
    router.save_pretrained({save_to!r})
    router = AutoModel.from_pretrained({save_to!r}, trust_remote_code=True)
out = {{"module": type(router).__module__}}
for mu in {mus!r}:
    d = router.route({prompts!r}, mu=mu)
    out[str(mu)] = {{"models": d.models, "quality": d.quality.tolist(), "cost": d.cost.tolist(),
                     "support": d.support.tolist(), "input_tokens": d.input_tokens.tolist()}}
print(json.dumps(out))
"""


def route_with_remote_code(folder, tmp_path, save_to=None) -> dict:
    code = ROUTE_WITH_REMOTE_CODE.format(
        folder=str(folder), save_to=str(save_to) if save_to else "", mus=MUS, prompts=TINY_PROMPTS
    )
    return run_without_carrot_hub(code, cwd=tmp_path)


def assert_routes_as(router, expected: dict) -> None:
    for mu in MUS:
        decision, want = router.route(TINY_PROMPTS, mu=mu), expected[str(mu)]
        assert decision.models == want["models"], mu
        assert torch.equal(decision.quality, torch.tensor(want["quality"])), mu
        assert torch.equal(decision.cost, torch.tensor(want["cost"], dtype=decision.cost.dtype)), mu
        assert torch.equal(decision.input_tokens, torch.tensor(want["input_tokens"])), mu
        assert torch.allclose(decision.support, torch.tensor(want["support"]), equal_nan=True), mu


@pytest.fixture(params=["transformer", "static"])
def router_saved_by_previous_release(request, tmp_path):
    """A router (transformer or static encoder) saved by the previous release's code, and how that code routed it."""
    router = request.getfixturevalue("knn_router" if request.param == "transformer" else "static_knn_router")
    today = tmp_path / "today"
    router.save_pretrained(today)
    # The previous release's code, alone in the folder, loads the weights and saves the router itself.
    with_old_code = tmp_path / "with-old-code"
    shutil.copytree(today, with_old_code)
    for name in package_code_files():
        (with_old_code / name).unlink()
    for name in ("configuration_carrot.py", "modeling_carrot.py"):
        shutil.copy(PREVIOUS_RELEASE / name, with_old_code / name)
    saved = tmp_path / "saved-by-previous-release"
    routed = route_with_remote_code(with_old_code, tmp_path, save_to=saved)
    assert code_files(saved) == (["configuration_carrot.py", "modeling_carrot.py"], [])
    assert (saved / "modeling_carrot.py").read_text() == (PREVIOUS_RELEASE / "modeling_carrot.py").read_text()
    return saved, routed


def test_loads_with_todays_classes_and_routes_identically(router_saved_by_previous_release):
    saved, routed_by_previous_release = router_saved_by_previous_release
    router = AutoModel.from_pretrained(saved)
    assert isinstance(router, CarrotRouter)
    assert_routes_as(router, routed_by_previous_release)


def test_resaved_with_todays_code_carries_every_sibling_and_routes_identically_as_remote_code(
    router_saved_by_previous_release, tmp_path
):
    saved, routed_by_previous_release = router_saved_by_previous_release
    resaved = tmp_path / "resaved"
    AutoModel.from_pretrained(saved).save_pretrained(resaved)
    assert code_files(resaved) == (package_code_files(), [])
    for name in package_code_files():
        assert (resaved / name).read_bytes() == (PACKAGE_DIR / name).read_bytes()
    assert json.loads((resaved / "config.json").read_text())["auto_map"]["AutoModel"] == "modeling_carrot.CarrotRouter"
    routed_today = route_with_remote_code(resaved, tmp_path)
    assert not routed_today["module"].startswith("carrot_hub")
    assert_routes_as(AutoModel.from_pretrained(resaved), routed_today)
    for mu in MUS:
        assert routed_today[str(mu)] == routed_by_previous_release[str(mu)], mu
