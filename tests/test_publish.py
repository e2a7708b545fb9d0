"""Publishing: what one `publish_router` commit sends (Hub calls patched, no network), the card's
metadata, loading the captured files in a fresh process without carrot_hub, and bad input."""

import json
import shutil
import textwrap
from pathlib import Path

import pytest
import torch
from huggingface_hub import HfApi, ModelCard

import carrot_hub.router_publishing as publishing
from carrot_hub.hub_code import package_code_files
from carrot_hub.router_publishing import PublishError, publish_router

from .hidden_package import run_without_carrot_hub
from .hub_recorder import HubRecorder
from .hub_errors import hub_http_error

ROUTER_FILES = {
    "config.json",
    *package_code_files(),
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
}
EVAL = {
    "split": "test",
    "dataset": "withmartian/routerbench",
    "dataset_name": "RouterBench zero-shot",
    "n_prompts": 953,
    "routers": {"carrot-knn": {"aiq": 0.8123, "quality_mu0": 0.851, "cost_to_match_best": 0.27}},
    "best_single": {"model": "big-model", "quality": 0.88, "cost": 0.005},
    "oracle": {"quality": 0.97, "cost": 0.0002},
}
PROMPTS = [
    "Write a python function that returns the nth Fibonacci number.",
    "Which planet is known as the red planet? A) Venus B) Mars C) Jupiter",
    "The trophy does not fit in the suitcase because _ is too big. A) trophy B) suitcase",
    "Explain why the sky is blue.",
]
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64


@pytest.fixture
def hub(monkeypatch):
    return HubRecorder(monkeypatch)


@pytest.fixture
def plot_file(tmp_path):
    path = tmp_path / "curve.png"
    path.write_bytes(PNG)
    return path


def test_publish_sends_one_commit_with_the_exact_files(saved_knn_router, hub, plot_file):
    result = publish_router(
        saved_knn_router, "someone/tiny-router", private=True, commit_message="first router",
        eval_results=EVAL, plot=plot_file, encoder_id="sentence-transformers/all-MiniLM-L6-v2",
    )
    kinds = [call[0] for call in hub.calls]
    assert kinds == ["create_repo", "create_commit"]
    assert hub.calls[0][2]["private"] is True and hub.calls[0][2]["exist_ok"] is True
    assert hub.calls[1][2]["commit_message"] == "first router" and hub.calls[1][2]["revision"] is None
    assert hub.names == ROUTER_FILES | {"README.md", "cost_quality.png", "eval_results.json"}
    assert hub.content("model.safetensors") == (saved_knn_router / "model.safetensors").read_bytes()
    assert hub.content("cost_quality.png") == PNG
    assert json.loads(hub.content("eval_results.json")) == EVAL
    assert {name for name, _ in result.files} == hub.names
    assert dict(result.files)["model.safetensors"] == (saved_knn_router / "model.safetensors").stat().st_size


def test_card_metadata_is_what_the_hub_reads(saved_knn_router, hub, plot_file):
    publish_router(saved_knn_router, "someone/tiny-router", eval_results=EVAL, plot=plot_file,
                   encoder_id="sentence-transformers/all-MiniLM-L6-v2", card_date="2025-01-02")
    card = ModelCard(hub.content("README.md").decode("utf-8"))
    data = card.data
    assert data.library_name == "transformers"
    assert data.license == "mit"
    assert {"llm-routing", "carrot", "router"} <= set(data.tags)
    assert data.base_model == "sentence-transformers/all-MiniLM-L6-v2"
    assert data.datasets == ["withmartian/routerbench"]
    assert getattr(data, "pipeline_tag", None) is None
    metrics = {result.metric_type: result for result in data.eval_results}
    assert set(metrics) == {"aiq", "quality_mu0", "cost_to_match_best"}
    assert metrics["aiq"].metric_value == pytest.approx(0.8123)
    assert all(result.dataset_split == "test" for result in data.eval_results)
    text = card.text
    assert "![" in text and "(cost_quality.png)" in text
    for name in ("big-model", "mid-model", "small-model"):
        assert f"| {name} |" in text
    assert "someone/tiny-router" in text and "trust_remote_code=True" in text


def test_revision_creates_the_branch_first(saved_knn_router, hub):
    publish_router(saved_knn_router, "someone/tiny-router", revision="cheaper-prices", check_weights=False)
    assert [call[0] for call in hub.calls] == ["create_repo", "create_branch", "create_commit"]
    assert hub.calls[1][2]["branch"] == "cheaper-prices"
    assert hub.calls[2][2]["revision"] == "cheaper-prices"
    assert "eval_results.json" not in hub.names and "cost_quality.png" not in hub.names


_ROUTE_WITHOUT_CARROT_HUB = """
    import json
    from huggingface_hub import ModelCard
    from transformers import AutoModel

    router = AutoModel.from_pretrained(".", trust_remote_code=True)
    assert type(router).__module__.startswith("transformers_modules"), type(router).__module__
    card = ModelCard.load("README.md")  # huggingface_hub's own parser: YAML metadata and model-index
    out = {"tags": card.data.tags, "base_model": card.data.base_model,
           "eval": [[r.metric_type, r.metric_value, r.dataset_split] for r in card.data.eval_results or []],
           "text": card.text}
    for mu in (0.0, 0.5, 1.0):
        decision = router.route(PROMPTS, mu=mu)
        out[str(mu)] = {"models": decision.models, "quality": decision.quality.tolist(),
                        "output_tokens": decision.output_tokens.tolist()}
    print(json.dumps(out))
"""


def route_without_carrot_hub(folder: Path) -> dict:
    """Load a captured upload in a fresh process where carrot_hub cannot be imported, as a Hub user would."""
    return run_without_carrot_hub(f"PROMPTS = {PROMPTS!r}\n" + textwrap.dedent(_ROUTE_WITHOUT_CARROT_HUB), cwd=folder)


def assert_routes_like(remote: dict, router) -> None:
    for mu in (0.0, 0.5, 1.0):
        local = router.route(PROMPTS, mu=mu)
        assert remote[str(mu)]["models"] == local.models
        torch.testing.assert_close(torch.tensor(remote[str(mu)]["quality"]), local.quality, rtol=0, atol=1e-6)
        torch.testing.assert_close(torch.tensor(remote[str(mu)]["output_tokens"]), local.output_tokens, rtol=1e-6, atol=1e-4)


def test_captured_upload_loads_without_carrot_hub_and_routes_the_same(saved_knn_router, knn_router, hub, tmp_path):
    publish_router(saved_knn_router, "someone/tiny-router", check_weights=False)
    assert_routes_like(route_without_carrot_hub(hub.write_to(tmp_path / "downloaded")), knn_router)


def test_push_to_hub_sends_the_carrot_card_in_the_same_commit(knn_router, hub, plot_file, tmp_path):
    """`router.push_to_hub` is the publishing path (issue 12): one commit, the CARROT card with
    model-index metrics, the evaluation and its plot; the capture works without carrot_hub."""
    result = knn_router.push_to_hub("someone/tiny-router", eval_results=EVAL, plot=plot_file,
                                    commit_message="first router", tags=["my-team"])
    assert [call[0] for call in hub.calls] == ["create_repo", "create_commit"]
    assert hub.calls[1][2]["commit_message"] == "first router"
    assert hub.names == ROUTER_FILES | {"README.md", "eval_results.json", "cost_quality.png"}
    assert result.commit_url.endswith("/commit/0") and result.card == hub.content("README.md").decode()
    remote = route_without_carrot_hub(hub.write_to(tmp_path / "downloaded"))
    assert {"carrot", "llm-routing", "my-team"} <= set(remote["tags"])
    assert ["aiq", 0.8123, "test"] in remote["eval"] and ["quality_mu0", 0.851, "test"] in remote["eval"]
    assert "cost_quality.png" in remote["text"] and "[More Information Needed]" not in remote["text"]
    for name in knn_router.config.candidate_models:
        assert f"| {name} |" in remote["text"]
    assert_routes_like(remote, knn_router)


def test_save_pretrained_writes_the_card_but_keeps_a_users_readme(knn_router, tmp_path):
    knn_router.save_pretrained(tmp_path / "saved")
    card = ModelCard.load(tmp_path / "saved" / "README.md")
    assert "carrot" in card.data.tags and "| big-model |" in card.text
    knn_router.save_pretrained(tmp_path / "saved")  # its own card is refreshed
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "README.md").write_text("# My notes about this router\n")
    with pytest.warns(UserWarning, match="not written by carrot_hub"):
        knn_router.save_pretrained(mine)
    assert (mine / "README.md").read_text() == "# My notes about this router\n"


# ------------------------------------------------------------------------------- bad input


def test_no_token_stops_before_anything_is_sent(saved_knn_router, monkeypatch):
    recorder = HubRecorder(monkeypatch, token=None)
    with pytest.raises(PublishError, match=r"hf auth login.*HF_TOKEN.*Nothing was sent"):
        publish_router(saved_knn_router, "someone/tiny-router")
    assert recorder.calls == []


@pytest.mark.parametrize("repo_id", ["bad id", "a/b/c", "", "org/--x", "https://huggingface.co/org/x", None])
def test_malformed_repo_id(saved_knn_router, hub, repo_id):
    with pytest.raises(PublishError, match="repo id"):
        publish_router(saved_knn_router, repo_id)
    assert hub.calls == []


def test_missing_files_are_all_listed(saved_knn_router, hub, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(saved_knn_router, broken)
    for name in ("model.safetensors", "tokenizer.json", "decision_carrot.py"):
        (broken / name).unlink()
    with pytest.raises(PublishError) as error:
        publish_router(broken, "someone/tiny-router")
    message = str(error.value)
    assert "model.safetensors" in message and "decision_carrot.py" in message and "tokenizer.json" in message
    assert "save_pretrained" in message and "\n" not in message
    assert hub.calls == []


def test_config_without_auto_map_is_refused(saved_knn_router, hub, tmp_path):
    broken = tmp_path / "no-auto-map"
    shutil.copytree(saved_knn_router, broken)
    config = json.loads((broken / "config.json").read_text())
    config.pop("auto_map")
    (broken / "config.json").write_text(json.dumps(config))
    with pytest.raises(PublishError, match="auto_map"):
        publish_router(broken, "someone/tiny-router")
    assert hub.calls == []


def test_not_a_folder_and_bad_plot(saved_knn_router, hub, tmp_path):
    with pytest.raises(PublishError, match="not a folder"):
        publish_router(tmp_path / "nowhere", "someone/tiny-router")
    fake = tmp_path / "plot.png"
    fake.write_text("not an image")
    with pytest.raises(PublishError, match="not a PNG"):
        publish_router(saved_knn_router, "someone/tiny-router", plot=fake)
    assert hub.calls == []


def test_hub_refusal_is_one_clear_line(saved_knn_router, monkeypatch):
    HubRecorder(monkeypatch)

    def refuse(api, repo_id, **kwargs):
        raise hub_http_error(403, "403 Forbidden: You don't have the rights to create a model under this namespace")

    monkeypatch.setattr(HfApi, "create_repo", refuse)
    with pytest.raises(PublishError, match="write access"):
        publish_router(saved_knn_router, "someone-else/tiny-router", check_weights=False)


def test_cli_entry_points(saved_knn_router, hub, tmp_path, monkeypatch, capsys):
    import argparse

    parser = publishing.add_publish_arguments(argparse.ArgumentParser())
    args = parser.parse_args([str(saved_knn_router), "someone/tiny-router", "--private", "--revision", "v2"])
    assert publishing.run_publish(args) == 0
    assert "model.safetensors" in capsys.readouterr().out and hub.calls[0][2]["private"] is True
    # a converted routing data set goes to the data module's dataset push
    dataset = tmp_path / "dataset"
    (dataset / "data").mkdir(parents=True)
    (dataset / "data" / "train-00000-of-00001.parquet").write_bytes(b"PAR1")
    pushed = []
    import carrot_hub.data.dataset_publishing as data_publishing

    monkeypatch.setattr(data_publishing, "push_routing_dataset", lambda folder, repo_id, **kw: pushed.append(repo_id) or "ok")
    assert publishing.run_publish(parser.parse_args([str(dataset), "someone/routing-data"])) == 0
    assert pushed == ["someone/routing-data"]


def test_hub_source_that_cannot_be_downloaded(monkeypatch):
    import huggingface_hub

    def offline(*args, **kwargs):
        raise OSError("offline mode is enabled")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(PublishError, match="neither a local folder nor a downloadable Hub router"):
        publishing.local_router_folder("someone/not-here")


def test_a_hub_error_quoting_the_token_is_relayed_without_it(saved_knn_router, monkeypatch):
    """Routers and routing data sets alike (issue 15.16)."""
    from carrot_hub.data import push_routing_dataset
    from carrot_hub.default import DEFAULT_DATA_DIR

    secret = "hf_SecretTokenValue1234567890"
    HubRecorder(monkeypatch, token=secret)

    def refuse(api, repo_id, **kwargs):
        raise hub_http_error(401, f"401 Unauthorized: invalid credentials in header 'Bearer {secret}'")

    monkeypatch.setattr(HfApi, "create_repo", refuse)
    for publish in (lambda: publish_router(saved_knn_router, "someone/tiny-router", check_weights=False),
                    lambda: push_routing_dataset(DEFAULT_DATA_DIR, "someone/routing-data")):
        with pytest.raises(PublishError) as error:
            publish()
        assert secret not in str(error.value) and "hf_***" in str(error.value)
        assert error.value.__cause__ is None and error.value.__suppress_context__  # no chained original to print


@pytest.mark.parametrize("revision", ["my branch", "a..b", "-x", "feature:1", "refs/heads/x", "refs/pr/0", ""])
def test_a_bad_revision_is_refused_before_the_repo_is_created(saved_knn_router, hub, revision):
    with pytest.raises(PublishError, match="revision"):
        publish_router(saved_knn_router, "someone/tiny-router", revision=revision, check_weights=False)
    assert hub.calls == []


def test_an_open_pull_request_can_be_committed_to(saved_knn_router, hub):
    publish_router(saved_knn_router, "someone/tiny-router", revision="refs/pr/3", check_weights=False)
    assert [call[0] for call in hub.calls] == ["create_repo", "create_commit"]  # no branch named refs/pr/3
    assert hub.calls[1][2]["revision"] == "refs/pr/3"
