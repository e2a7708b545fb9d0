"""`carrot logs push`: an outcome log converted and sent to a Hub dataset repo, captured (no network)."""

import pytest
from huggingface_hub import HfApi

from carrot_hub.cli import main
from carrot_hub.data import load_routing_table
from carrot_hub.data.outcome_log_publishing import push_outcome_log
from carrot_hub.serving.outcome_log_writer import OutcomeLog

from .conftest import TINY_PRICES, TINY_PROMPTS


@pytest.fixture
def captured(monkeypatch):
    calls = []

    def create_repo(self, repo_id, **kwargs):
        calls.append(("create_repo", repo_id, kwargs))

    def upload_folder(self, **kwargs):
        from huggingface_hub.utils import filter_repo_objects

        root = __import__("pathlib").Path(kwargs["folder_path"])
        files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
        sent = list(filter_repo_objects(files, allow_patterns=kwargs.get("allow_patterns")))
        table = load_routing_table(root)  # what the Hub would serve back to load_routing_table
        calls.append(("upload_folder", kwargs["repo_id"], {**kwargs, "sent": sent, "table": table,
                                                            "card": (root / "README.md").read_text()}))
        return "commit-info"

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    return calls


@pytest.fixture
def log_dir(tmp_path):
    folder = tmp_path / "served"
    with OutcomeLog(folder, prices=TINY_PRICES, prices_recorded_on="2026-11-28") as log:
        for i, prompt in enumerate(TINY_PROMPTS):
            model = "big-model" if i % 2 else "small-model"
            log.record({"request_id": f"r{i}", "prompt": prompt, "model": model, "status": "ok",
                        "usage": {"prompt_tokens": 20 + i, "completion_tokens": 50 + i}})
            if i < 4:
                log.feedback(f"r{i}", float(i % 2))
    return folder


def test_push_sends_the_served_traffic_as_one_dataset_commit(log_dir, captured, capsys):
    code = main(["logs", "push", str(log_dir), "me/served-data", "--private", "--revision", "week-48", "--token", "hf_test"])
    assert code == 0
    assert [c[0] for c in captured] == ["create_repo", "upload_folder"]
    _, repo_id, create = captured[0]
    assert repo_id == "me/served-data" and create["repo_type"] == "dataset" and create["private"] is True
    upload = captured[1][2]
    assert upload["revision"] == "week-48" and upload["repo_type"] == "dataset"
    assert upload["sent"] == ["README.md", "data/train-00000-of-00001.parquet", "prices.json"]
    table = upload["table"]
    assert sorted(table.prompts) == sorted(TINY_PROMPTS) and sorted(table.models) == ["big-model", "small-model"]
    assert int(table.observed.sum()) == 4  # the labelled requests; the others keep their tokens only
    assert table.prices == {m: TINY_PRICES[m] for m in table.models}
    assert "license: other" in upload["card"] and "carrot serve" in upload["card"]
    assert "6 prompts × 2 models (4 labelled cells, from 6 served requests)" in capsys.readouterr().out
    assert sorted(p.name for p in log_dir.iterdir())[-1] == "prices.json"  # the log is only read


def test_push_without_a_token_sends_nothing(log_dir, captured, monkeypatch):
    monkeypatch.setattr("huggingface_hub.get_token", lambda: None)
    with pytest.raises(Exception, match="hf auth login"):
        push_outcome_log(log_dir, "me/x")
    assert captured == []


@pytest.mark.parametrize(
    "argv, message",
    [
        (["logs", "push", "/no/such/folder", "me/x"], "is not an outcome log"),
        (["logs", "push", "LOG", "not a repo id"], "not a valid Hub repo id"),
        (["logs", "push"], "the following arguments are required"),
        (["logs"], "name an action"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(argv, message, log_dir, captured, capsys):
    argv = [str(log_dir) if part == "LOG" else part for part in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert captured == []
