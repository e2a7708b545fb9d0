"""Memory the outcome log keeps per served request for feedback lookups (issue 23, item 10).

    python scripts/measure_feedback_index.py --requests 200000

Writes `--requests` served records (gateway-shaped ids, a short prompt) to an outcome log in a
temporary folder, labels the last one (a lookup: before the index was bounded, this first lookup
read every shard into the index), and reports what the log object still holds afterwards, measured
with tracemalloc after a garbage collection. The last line is JSON.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
import time
import tracemalloc
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from carrot_hub.serving.outcome_log_writer import OutcomeLog  # noqa: E402


def measure(requests: int) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        tracemalloc.start()
        gc.collect()
        baseline = tracemalloc.get_traced_memory()[0]
        log = OutcomeLog(folder, fsync="never")
        started = time.perf_counter()
        request_id = None
        for number in range(requests):
            request_id = f"carrot-{uuid.uuid4().hex}"
            log.record({"request_id": request_id, "prompt": f"What is {number} + {number}?", "model": "big-model",
                        "status": "ok", "usage": {"prompt_tokens": 9, "completion_tokens": 12}})
        writing_s = time.perf_counter() - started
        started = time.perf_counter()
        log.feedback(request_id, 1.0)
        lookup_s = time.perf_counter() - started
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - baseline
        tracemalloc.stop()
        log.close()
    return {"requests": requests, "held_bytes": held, "bytes_per_request": round(held / requests, 1),
            "first_lookup_s": round(lookup_s, 4), "writing_s": round(writing_s, 1)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=200_000)
    args = parser.parse_args(argv)
    print(json.dumps(measure(args.requests)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
