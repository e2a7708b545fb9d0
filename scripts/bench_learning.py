"""Benchmark `carrot serve --learn`: RouterBench test AIQ before and after feeding one candidate's train labels
as feedback through the gateway's path (outcome log → feedback → OnlineLearner → remember). Last line: JSON.

    python scripts/bench_learning.py --cache-dir /work/cache/emb [--candidate NAME] [--data FOLDER]
"""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from training.evaluation.learning_benchmark import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())
