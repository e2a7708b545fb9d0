"""training.output: router folders are written whole or not at all, and never over a router by accident."""

import json

import pytest
from transformers import AutoModel

from training.output import check_output_dir, save_router_atomically


def leftovers(parent):
    return [p.name for p in parent.iterdir() if p.name.startswith(".")]


def test_writes_a_loadable_router_and_extra_json(knn_router, tmp_path):
    folder = save_router_atomically(knn_router, tmp_path / "r", extra_json={"training_report.json": {"k": 2}})
    assert (folder / "model.safetensors").exists() and (folder / "config.json").exists()
    assert json.loads((folder / "training_report.json").read_text()) == {"k": 2}
    loaded = AutoModel.from_pretrained(folder)
    assert loaded.config.candidate_models == knn_router.config.candidate_models
    assert leftovers(tmp_path) == []


def test_refuses_existing_router_unless_overwrite(knn_router, tmp_path):
    folder = save_router_atomically(knn_router, tmp_path / "r")
    before = (folder / "model.safetensors").read_bytes()
    with pytest.raises(FileExistsError, match="already holds a router.*overwrite"):
        save_router_atomically(knn_router, folder)
    assert (folder / "model.safetensors").read_bytes() == before
    (folder / "stale.txt").write_text("old")
    save_router_atomically(knn_router, folder, overwrite=True)
    assert not (folder / "stale.txt").exists()  # the folder was replaced as a whole
    assert (folder / "config.json").exists() and leftovers(tmp_path) == []


def test_refuses_non_empty_folder_and_file(tmp_path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "mine.txt").write_text("keep me")
    for overwrite in (False, True):  # --overwrite replaces only a router folder, never other files
        with pytest.raises(FileExistsError, match="not empty and holds no router"):
            check_output_dir(tmp_path / "notes", overwrite=overwrite)
    assert (tmp_path / "notes" / "mine.txt").read_text() == "keep me"
    (tmp_path / "afile").write_text("x")
    with pytest.raises(FileExistsError, match="is a file"):
        check_output_dir(tmp_path / "afile", overwrite=True)
    assert check_output_dir(tmp_path / "new") == tmp_path / "new"


def test_failure_while_saving_keeps_the_old_router(knn_router, tmp_path, monkeypatch):
    folder = save_router_atomically(knn_router, tmp_path / "r")
    before = (folder / "model.safetensors").read_bytes()

    def broken_save(directory, *args, **kwargs):
        (directory / "config.json").write_text("{half")
        raise OSError("disk full")

    monkeypatch.setattr(knn_router, "save_pretrained", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_router_atomically(knn_router, folder, overwrite=True)
    assert (folder / "model.safetensors").read_bytes() == before
    assert json.loads((folder / "config.json").read_text())["model_type"] == "carrot"
    assert leftovers(tmp_path) == []
    with pytest.raises(OSError):
        save_router_atomically(knn_router, tmp_path / "fresh")
    assert not (tmp_path / "fresh").exists() and leftovers(tmp_path) == []
