"""Shared pieces of the `carrot serve` command-line tests: the environment, running the command, one-line errors."""

from __future__ import annotations

import json
import os

from carrot_hub.cli import main

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def run(argv, capsys):
    """`carrot ...` in this process: (exit code, standard error)."""
    code = main([str(a) for a in argv])
    _, err = capsys.readouterr()
    return code, err


def assert_one_line(err: str, *fragments: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("carrot serve: error:"), err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def write(tmp_path, content, name="upstreams.yaml"):
    path = tmp_path / name
    path.write_text(json.dumps(content) if not isinstance(content, str) else content)
    return path
