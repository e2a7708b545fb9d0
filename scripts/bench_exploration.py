"""Benchmark judged exploration (`carrot serve --learn --explore RATE --judge CANDIDATE`) with real answers:
ZeroEval's 2024 table, candidates and judge replayed from its recorded answers and 0/1 grades, the real
gateway driven in process. Test AIQ every 200 requests for RATE 0, 0.05, 0.2, user feedback on the chosen
model, and other explored-candidate rules; optionally on re-splits and the new-task scenario
(GSM8K-only router, CRUXEval-O traffic). Last line: JSON. Not a timed test: it takes tens of minutes.

    python scripts/bench_exploration.py --cache-dir /work/cache/emb [--resplits 0,1] [--new-task] [--out r.json]

See training/evaluation/exploration_benchmark.py for the set-up, docs/exploration.md for the figures.
"""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from training.evaluation.exploration_benchmark import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())
