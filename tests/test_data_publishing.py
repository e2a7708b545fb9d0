"""push_routing_dataset: what would be sent to the Hub, captured by patching HfApi (no network)."""

import shutil
from pathlib import Path

import pytest
from huggingface_hub import HfApi

from carrot_hub.data import HubAuthError, check_dataset_folder, push_routing_dataset

DEFAULT_DATA = Path(__file__).resolve().parent.parent / "carrot_hub" / "default_data" / "routerbench-0shot"


@pytest.fixture
def dataset_folder(tmp_path):
    folder = tmp_path / "routerbench"
    shutil.copytree(DEFAULT_DATA, folder)
    (folder / "notes.txt").write_text("private scratch notes")  # must not be sent
    return folder


@pytest.fixture
def captured(monkeypatch):
    calls = []

    def create_repo(self, repo_id, **kwargs):
        calls.append(("create_repo", repo_id, kwargs))
        return f"https://huggingface.co/datasets/{repo_id}"

    def upload_folder(self, **kwargs):
        from huggingface_hub.utils import filter_repo_objects

        root = Path(kwargs["folder_path"])
        files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
        sent = list(filter_repo_objects(files, allow_patterns=kwargs.get("allow_patterns")))
        calls.append(("upload_folder", kwargs["repo_id"], {**kwargs, "sent": sent}))
        return "commit-info"

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    return calls


def test_push_sends_one_commit_with_card_prices_and_data(dataset_folder, captured):
    result = push_routing_dataset(dataset_folder, "me/routerbench-sprout", token="hf_test", private=True)
    assert result == "commit-info"
    assert [c[0] for c in captured] == ["create_repo", "upload_folder"]
    _, repo_id, create = captured[0]
    assert repo_id == "me/routerbench-sprout" and create["repo_type"] == "dataset" and create["private"] is True
    _, _, upload = captured[1]
    assert upload["repo_type"] == "dataset" and upload["token"] == "hf_test"
    assert upload["sent"] == ["README.md", "data/test-00000-of-00001.parquet", "data/train-00000-of-00001.parquet", "prices.json"]
    card = (dataset_folder / "README.md").read_text()
    for needed in ("license: mit", "## Provenance", "RouterBench", "| gpt-4-1106-preview | 10 | 30 |", "recorded on 2024-03-01"):
        assert needed in card


def test_push_without_token_sends_nothing(dataset_folder, captured, monkeypatch):
    monkeypatch.setattr("huggingface_hub.get_token", lambda: None)
    with pytest.raises(HubAuthError, match="hf auth login.*HF_TOKEN.*Nothing was sent"):
        push_routing_dataset(dataset_folder, "me/x")
    assert captured == []


def test_push_refuses_a_folder_without_card_or_licence(dataset_folder, captured):
    card = dataset_folder / "README.md"
    card.write_text(card.read_text().replace("license: mit\n", ""))
    with pytest.raises(ValueError, match="no licence"):
        push_routing_dataset(dataset_folder, "me/x", token="hf_test")
    card.unlink()
    with pytest.raises(ValueError, match="no README.md"):
        push_routing_dataset(dataset_folder, "me/x", token="hf_test")
    assert captured == []


def test_check_dataset_folder_lists_what_is_published():
    summary = check_dataset_folder(DEFAULT_DATA)
    assert summary["splits"] == ["train", "test"] and "prices.json" in summary["files"]


def test_dataset_and_router_paths_agree_on_revisions(dataset_folder, captured):
    """Both publishing paths take an open pull request refs/pr/N and refuse a bad branch name up front."""
    from carrot_hub.hub_checks import PublishError

    push_routing_dataset(dataset_folder, "me/x", token="hf_test", revision="refs/pr/1")
    assert captured[-1][2]["revision"] == "refs/pr/1"
    captured.clear()
    for bad in ("my branch", "refs/heads/x", "refs/pr/x"):
        with pytest.raises(PublishError, match="revision"):
            push_routing_dataset(dataset_folder, "me/x", token="hf_test", revision=bad)
    assert captured == []

