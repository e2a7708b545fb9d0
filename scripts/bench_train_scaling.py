"""Benchmark kNN training time against prompts, tasks and candidates (see `training.scaling`). Last line: JSON.

    python scripts/bench_train_scaling.py --sizes 2000,10000,50000 --models 15 --cache-dir /work/cache/emb
"""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from training.scaling import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())
