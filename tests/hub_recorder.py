"""A stand-in for the Hub in publishing tests: records what `create_repo`, `create_branch` and
`create_commit` would send (no network), and refuses any other upload path."""

from pathlib import Path
from types import SimpleNamespace

from huggingface_hub import HfApi


class HubRecorder:
    """Stands in for the Hub: records create_repo / create_branch / create_commit calls."""

    def __init__(self, monkeypatch, token="hf_test_token"):
        self.calls = []
        self.operations = []
        self.contents = {}
        recorder = self

        def create_repo(api, repo_id, **kwargs):
            recorder.calls.append(("create_repo", repo_id, kwargs))
            return f"https://huggingface.co/{repo_id}"

        def create_branch(api, repo_id, **kwargs):
            recorder.calls.append(("create_branch", repo_id, kwargs))

        def create_commit(api, repo_id, operations, **kwargs):
            operations = list(operations)
            recorder.calls.append(("create_commit", repo_id, kwargs))
            recorder.operations.extend(operations)
            for op in operations:  # read now, as the Hub client would: staging folders may vanish after
                recorder.contents[op.path_in_repo] = recorder._read(op)
            return SimpleNamespace(commit_url=f"https://huggingface.co/{repo_id}/commit/0")

        def forbidden(api, *args, **kwargs):
            raise AssertionError("publishing must go through create_commit only")

        monkeypatch.setattr(HfApi, "create_repo", create_repo)
        monkeypatch.setattr(HfApi, "create_branch", create_branch)
        monkeypatch.setattr(HfApi, "create_commit", create_commit)
        monkeypatch.setattr(HfApi, "upload_file", forbidden)
        monkeypatch.setattr(HfApi, "upload_folder", forbidden)
        monkeypatch.setattr("huggingface_hub.get_token", lambda: token)

    @property
    def names(self) -> set[str]:
        return {op.path_in_repo for op in self.operations}

    def content(self, name: str) -> bytes:
        return self.contents[name]

    @staticmethod
    def _read(op) -> bytes:
        source = op.path_or_fileobj
        if isinstance(source, (str, Path)):
            return Path(source).read_bytes()
        if isinstance(source, bytes):
            return source
        source.seek(0)
        return source.read()

    def write_to(self, folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        for name in self.names:
            (folder / name).write_bytes(self.content(name))
        return folder
