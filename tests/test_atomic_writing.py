"""carrot_hub.atomic_writing: a file or folder appears whole or not at all, and a killed writer's
leftovers never block (or lose) anything."""

import os
import subprocess
import sys

import pytest

from carrot_hub.atomic_writing import atomic_file, atomic_folder, atomic_path


def hidden(parent):
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def dead_pid() -> int:
    """The id of a process that has exited."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_folder_appears_whole_and_failure_leaves_nothing(tmp_path):
    with atomic_folder(tmp_path / "out") as staging:
        (staging / "a.txt").write_text("a")
        assert not (tmp_path / "out").exists()  # nothing visible while writing
    assert (tmp_path / "out" / "a.txt").read_text() == "a" and hidden(tmp_path) == []
    with pytest.raises(RuntimeError, match="boom"), atomic_folder(tmp_path / "new") as staging:
        (staging / "half.txt").write_text("half")
        raise RuntimeError("boom")
    assert not (tmp_path / "new").exists() and hidden(tmp_path) == []


def test_a_folder_published_meanwhile_wins_unless_replacing(tmp_path):
    target = tmp_path / "cache"
    with pytest.raises(FileExistsError), atomic_folder(target) as staging:
        (staging / "mine.txt").write_text("mine")
        target.mkdir()  # another process published first
        (target / "theirs.txt").write_text("theirs")
    assert sorted(p.name for p in target.iterdir()) == ["theirs.txt"] and hidden(tmp_path) == []
    with atomic_folder(target, replace=True) as staging:
        (staging / "mine.txt").write_text("mine")
    assert sorted(p.name for p in target.iterdir()) == ["mine.txt"] and hidden(tmp_path) == []


def test_a_killed_writers_leftovers_are_swept_and_a_moved_aside_folder_comes_back(tmp_path):
    pid = dead_pid()
    (tmp_path / f".out.tmp-{pid}-abc").mkdir()
    (tmp_path / f".out.tmp-{pid}-abc" / "half").write_text("x")
    (tmp_path / f".out.tmp-{os.getpid()}-live").mkdir()  # a running writer's staging is left alone
    # killed between "move the old folder aside" and "move the new one in": the old one is the only copy
    (tmp_path / f".router.old-{pid}-xyz").mkdir()
    (tmp_path / f".router.old-{pid}-xyz" / "config.json").write_text("{}")
    with atomic_folder(tmp_path / "out") as staging:
        (staging / "done").write_text("y")
    assert hidden(tmp_path) == [f".out.tmp-{os.getpid()}-live", f".router.old-{pid}-xyz"]
    with atomic_folder(tmp_path / "router", replace=True) as staging:
        assert (tmp_path / "router" / "config.json").read_text() == "{}"  # restored before anything else
        (staging / "config.json").write_text('{"new": true}')
    assert (tmp_path / "router" / "config.json").read_text() == '{"new": true}'
    assert hidden(tmp_path) == [f".out.tmp-{os.getpid()}-live"]


def test_file_replaced_only_when_the_block_finishes(tmp_path):
    path = tmp_path / "results.json"
    path.write_text("old")
    with pytest.raises(ValueError), atomic_file(path) as handle:
        handle.write("new, half")
        raise ValueError("interrupted")
    assert path.read_text() == "old" and hidden(tmp_path) == []
    with atomic_file(path) as handle:
        handle.write("new")
    assert path.read_text() == "new" and oct(path.stat().st_mode & 0o777) != "0o600"
    with atomic_path(tmp_path / "w.bin") as staging:
        staging.write_bytes(b"\x00\x01")
    assert (tmp_path / "w.bin").read_bytes() == b"\x00\x01" and hidden(tmp_path) == []
