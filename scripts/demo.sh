#!/usr/bin/env bash
# Set up, then route a few prompts with the embedded default router (no network needed).
# The first run builds the default router into a cache folder; later runs load it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1
if [ "$#" -eq 0 ]; then
  set -- "Write a python function to check whether a number is prime." \
         "Which gas do plants absorb from the air? A) oxygen B) carbon dioxide C) nitrogen D) helium" \
         "Prove that the square root of 2 is irrational."
fi
exec .venv/bin/carrot route "$@"
