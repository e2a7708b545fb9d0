#!/usr/bin/env bash
# Set up, then run the default (fast) test suite. Slow end-to-end tests: `.venv/bin/pytest -m slow`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec .venv/bin/python -m pytest -q "$@"
