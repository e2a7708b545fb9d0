"""`carrot learn`: outcome logs → router revisions, each label applied once, one writer per store."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from carrot_hub.cli import load_router, main
from carrot_hub.label_reading import DatasetLogSource, FolderLogSource, LabelReader
from carrot_hub.log_learning import LogLearner, parse_duration
from carrot_hub.modeling_carrot import CarrotRouter
from carrot_hub.router_store import FolderStore, HubStore, StoreLocked
from carrot_hub.serving.outcome_log_writer import OutcomeLog

from .conftest import TINY_MODELS, TINY_PROMPTS

NEW = ["Translate 'good morning' into French.", "Summarise the plot of Hamlet in one sentence.", "What is 7 * 8?"]


def serve(log, request_id, prompt, model="small-model", tokens=25):
    log.record({"request_id": request_id, "prompt": prompt, "model": model, "status": "ok",
                "usage": {"prompt_tokens": 9, "completion_tokens": tokens}})


def learner(log_dir, store_dir, router_folder, **options):
    return LogLearner(FolderLogSource(log_dir), FolderStore(store_dir), CarrotRouter.from_pretrained,
                      initial_router=str(router_folder), **options)


def test_each_label_is_applied_once_across_restarts(saved_knn_router, tmp_path):
    log = OutcomeLog(tmp_path / "log")
    for i, prompt in enumerate([TINY_PROMPTS[2], NEW[0]]):
        serve(log, f"r{i}", prompt)
        log.feedback(f"r{i}", 1.0)
    first = learner(tmp_path / "log", tmp_path / "store", saved_knn_router)
    revision = first.step()
    assert revision and first.step() is None  # nothing new: nothing published
    first.close()
    grown = CarrotRouter.from_pretrained(tmp_path / "store" / revision)
    assert grown.config.knn_memory_size == 7  # the training prompt's cell was filled, the new prompt added a row
    small = TINY_MODELS.index("small-model")
    assert grown.predictor.quality[2, small].item() == 1.0 and grown.predictor.quality_observed[:, small].sum() == 7

    serve(log, "r2", NEW[1])
    log.feedback("r2", 0.0)
    again = learner(tmp_path / "log", tmp_path / "store", saved_knn_router)  # a restart resumes from the store
    assert again.revision == revision
    second = again.step()
    again.close()
    state = json.loads((tmp_path / "store" / second / "learning.json").read_text())
    assert state["labels_applied"] == 3 and state["labels_in_revision"] == 1 and state["previous_revision"] == revision
    final = load_router(str(tmp_path / "store"))  # the store folder loads its current revision
    assert final.config.knn_memory_size == 8

    # the same labels applied by one process give the same memory
    direct = CarrotRouter.from_pretrained(saved_knn_router)
    direct.remember([TINY_PROMPTS[2], NEW[0], NEW[1]], "small-model", [1.0, 1.0, 0.0], [25, 25, 25])
    for name in ("embeddings", "quality", "quality_observed", "log_output_tokens", "prompt_keys"):
        assert torch.allclose(getattr(final.predictor, name).float(), getattr(direct.predictor, name).float(), atol=1e-6), name


def test_feedback_served_by_another_worker_and_judge_labels_are_joined(saved_knn_router, tmp_path):
    worker_a, worker_b = OutcomeLog(tmp_path / "log"), OutcomeLog(tmp_path / "log")
    serve(worker_a, "a1", NEW[0])
    worker_b._append({"type": "feedback", "request_id": "a1", "score": 1.0, "time": 1.0})
    worker_b._append({"type": "feedback", "request_id": "a1", "score": 0.0, "time": 2.0, "source": "judge",
                      "model": "big-model", "usage": {"prompt_tokens": 9, "completion_tokens": 300}})
    worker_b._append({"type": "feedback", "request_id": "later", "score": 1.0, "time": 3.0})  # served not yet read
    reader = LabelReader(FolderLogSource(tmp_path / "log"), TINY_MODELS)
    labels = reader.read_new()
    assert [(l.model, l.score, l.source, l.output_tokens) for l in labels] == [
        ("small-model", 1.0, "user", 25.0), ("big-model", 0.0, "judge", 300.0)]
    assert [p["request_id"] for p in reader.pending] == ["later"]
    serve(worker_a, "later", NEW[1])
    assert [l.request_id for l in reader.read_new()] == ["later"] and reader.pending == []


def test_a_truncated_last_line_is_skipped_and_counted(tmp_path):
    log = OutcomeLog(tmp_path / "log")
    serve(log, "r0", NEW[0])
    log.feedback("r0", 1.0)
    log.close()
    with open(log.shard, "ab") as handle:
        handle.write(b'this is not json\n{"type": "feedback", "request_id": "r0", "sco')
    reader = LabelReader(FolderLogSource(tmp_path / "log"), TINY_MODELS)
    assert len(reader.read_new()) == 1
    assert reader.counts["bad_lines"] == 1 and reader.torn_lines == 1
    with open(log.shard, "ab") as handle:  # the writer finishes its line: it is read then, once
        handle.write(b're": 0.5, "time": 9}\n')
    assert [l.score for l in reader.read_new()] == [0.5] and reader.torn_lines == 0


def test_a_log_copied_from_the_hub_reads_the_same_with_datasets(tmp_path):
    log = OutcomeLog(tmp_path / "copy" / "replica-a")
    for i, prompt in enumerate(NEW):
        serve(log, f"r{i}", prompt)
        log.feedback(f"r{i}", i / 2)
    log.close()
    with open(log.shard, "ab") as handle:
        handle.write(b'{"type": "feedback", "req')
    from_folder = LabelReader(FolderLogSource(tmp_path / "copy"), TINY_MODELS)
    from_dataset = LabelReader(DatasetLogSource(folder=tmp_path / "copy"), TINY_MODELS)
    expected = from_folder.read_new()
    assert len(expected) == 3 and from_dataset.read_new() == expected and from_dataset.torn_lines == 1
    restarted = LabelReader(DatasetLogSource(folder=tmp_path / "copy"), TINY_MODELS, from_dataset.state())
    assert restarted.read_new() == []


def test_a_second_learner_on_one_store_refuses_naming_the_first(saved_knn_router, tmp_path, capsys):
    OutcomeLog(tmp_path / "log").close()
    first = learner(tmp_path / "log", tmp_path / "store", saved_knn_router)
    with pytest.raises(StoreLocked, match=rf"pid {os.getpid()}"):
        learner(tmp_path / "log", tmp_path / "store", saved_knn_router)
    code = main(["learn", str(tmp_path / "log"), "--router", str(saved_knn_router), "--out", str(tmp_path / "store"), "--once"])
    err = capsys.readouterr().err.splitlines()[-1]
    assert code == 2 and "already being written by carrot learn" in err and err.startswith("carrot learn: error:")
    first.close()
    assert main(["learn", str(tmp_path / "log"), "--router", str(saved_knn_router), "--out", str(tmp_path / "store"),
                 "--once"]) == 0


KILL_MID_PUBLISH = textwrap.dedent("""
    import os, signal, sys
    import carrot_hub.router_store as store
    from carrot_hub.label_reading import FolderLogSource
    from carrot_hub.log_learning import LogLearner
    from carrot_hub.modeling_carrot import CarrotRouter

    def killed(folder):  # the revision is written, not yet renamed nor named by LATEST
        os.kill(os.getpid(), signal.SIGKILL)

    store._fsync_tree = killed
    learner = LogLearner(FolderLogSource(sys.argv[1]), store.FolderStore(sys.argv[2]), CarrotRouter.from_pretrained,
                         initial_router=sys.argv[3])
    learner.step()
""")


def test_a_learner_killed_mid_publish_leaves_the_old_revision_valid(saved_knn_router, tmp_path):
    log = OutcomeLog(tmp_path / "log")
    serve(log, "r0", NEW[0])
    log.feedback("r0", 1.0)
    first = learner(tmp_path / "log", tmp_path / "store", saved_knn_router)
    old = first.step()
    first.close()
    serve(log, "r1", NEW[1])
    log.feedback("r1", 1.0)
    script = tmp_path / "kill.py"
    script.write_text(KILL_MID_PUBLISH)
    done = subprocess.run([sys.executable, str(script), str(tmp_path / "log"), str(tmp_path / "store"),
                           str(saved_knn_router)], capture_output=True, timeout=300)
    assert done.returncode == -9
    store = FolderStore(tmp_path / "store")
    assert store.current() == old and list((tmp_path / "store").glob(".*.tmp"))  # its half-written revision
    assert load_router(str(tmp_path / "store")).config.knn_memory_size == 7
    again = learner(tmp_path / "log", tmp_path / "store", saved_knn_router)  # the lock died with the process
    new = again.step()
    again.close()
    assert new != old and store.current() == new and not list((tmp_path / "store").glob(".*.tmp"))
    assert json.loads((tmp_path / "store" / new / "learning.json").read_text())["labels_applied"] == 2


def test_a_hub_store_publishes_the_router_and_its_position_in_one_commit(saved_knn_router, monkeypatch):
    from huggingface_hub import HfApi

    sent = []

    def create_commit(api, repo_id, operations, **kwargs):
        sent.append({op.path_in_repo: op for op in operations})
        return SimpleNamespace(oid="0123abcd" * 5, commit_url=f"https://huggingface.co/{repo_id}/commit/0123")

    monkeypatch.setattr(HfApi, "create_repo", lambda api, repo_id, **kwargs: None)
    monkeypatch.setattr(HfApi, "create_commit", create_commit)
    monkeypatch.setattr("huggingface_hub.get_token", lambda: "hf_test_token")
    router = CarrotRouter.from_pretrained(saved_knn_router)
    revision = HubStore("someone/carrot-learned", lock_dir="unused").publish(router, {"labels_applied": 3})
    assert revision == "0123abcd" * 5 and len(sent) == 1
    assert {"config.json", "model.safetensors", "README.md", "learning.json"} <= set(sent[0])
    assert json.loads(sent[0]["learning.json"].path_or_fileobj)["labels_applied"] == 3


class FakeHubRepo:
    """A Hub model repo's main branch for HubStore: commits refused with HTTP 412 when `parent_commit`
    is not the head (as the Hub does), and a record of every commit that landed."""

    def __init__(self, monkeypatch, head: str):
        import httpx2
        from huggingface_hub import HfApi
        from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError

        self.head, self.commits = head, []

        def create_commit(api, repo_id, operations, parent_commit=None, **kwargs):
            if parent_commit is not None and parent_commit != self.head:
                response = httpx2.Response(412, request=httpx2.Request("POST", f"https://huggingface.co/api/models/{repo_id}/commit/main"))
                raise HfHubHTTPError("412 Client Error: Precondition Failed: A commit has happened since. Please "
                                     "refresh and try again.", response=response)
            self.head = f"{len(self.commits) + 1:040d}"
            self.commits.append({op.path_in_repo: op for op in operations})
            return SimpleNamespace(oid=self.head, commit_url=f"https://huggingface.co/{repo_id}/commit/{self.head}")

        def no_state(*args, **kwargs):
            raise EntryNotFoundError("learning.json")

        monkeypatch.setattr(HfApi, "create_repo", lambda api, repo_id, **kwargs: None)
        monkeypatch.setattr(HfApi, "create_commit", create_commit)
        monkeypatch.setattr(HfApi, "model_info", lambda api, repo_id, **kwargs: SimpleNamespace(sha=self.head))
        monkeypatch.setattr("huggingface_hub.hf_hub_download", no_state)
        monkeypatch.setattr("huggingface_hub.get_token", lambda: "hf_test_token")


def test_a_second_writer_of_a_hub_repo_on_another_machine_is_refused_not_published_over(saved_knn_router, tmp_path,
                                                                                       monkeypatch):
    """The local lock cannot see a writer on another machine; the commit's parent does: the Hub refuses
    the second writer's commit, which would have published a router without the first one's labels."""
    from carrot_hub.router_store import StoreConflict

    repo = FakeHubRepo(monkeypatch, head="a" * 40)
    log = OutcomeLog(tmp_path / "log")
    serve(log, "r0", NEW[0])
    log.feedback("r0", 1.0)

    def hub_learner(machine):
        store = HubStore("someone/carrot-learned", lock_dir=tmp_path / machine)
        return LogLearner(FolderLogSource(tmp_path / "log"), store, lambda spec: CarrotRouter.from_pretrained(saved_knn_router))

    first, second = hub_learner("machine-1"), hub_learner("machine-2")  # both start from the repo's head
    published = first.step()
    assert published == repo.head and len(repo.commits) == 1
    with pytest.raises(StoreConflict, match="moved past aaaaaaaaaaaa: another writer committed"):
        second.step()
    assert repo.head == published and len(repo.commits) == 1  # nothing published over the first writer
    serve(log, "r1", NEW[1])
    log.feedback("r1", 0.0)
    assert first.step() == repo.head and len(repo.commits) == 2  # the first writer goes on from its own commit
    first.close()
    second.close()


def test_a_folder_store_refuses_a_publish_grown_from_an_old_revision(saved_knn_router, tmp_path):
    from carrot_hub.router_store import StoreConflict

    store = FolderStore(tmp_path / "store")
    router = CarrotRouter.from_pretrained(saved_knn_router)
    first = store.publish(router, {"labels_applied": 1})
    second = store.publish(router, {"labels_applied": 2}, parent=first)
    with pytest.raises(StoreConflict, match=f"moved from revision {first} to {second}"):
        store.publish(router, {"labels_applied": 3}, parent=first)
    assert store.current() == second


def test_durations():
    assert parse_duration("60s") == 60 and parse_duration("10m") == 600 and parse_duration("250ms") == 0.25
    with pytest.raises(Exception, match="positive duration"):
        parse_duration("soon")
