"""
What the exploration spend ledger costs the gateway's event loop (carrot_hub/serving/spend_ledger.py).

Per exploration the gateway writes its sums five times (reserve, three spends, release) and sums the
day over every worker's file twice (when the exploration is offered and when it starts); per served
request it adds to its serving sum in memory (written at most once a second). This times each of
those on a ledger folder holding `--others` other workers' files. Last line: JSON.

    python scripts/bench_spend_ledger.py --others 3 --repeat 2000
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from carrot_hub.serving.spend_ledger import SpendLedger  # noqa: E402


def microseconds_per_call(call, repeat: int) -> float:
    began = time.perf_counter()
    for _ in range(repeat):
        call()
    return round((time.perf_counter() - began) / repeat * 1e6, 2)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--others", type=int, default=3, help="other workers' files in the day's folder (default 3)")
    parser.add_argument("--repeat", type=int, default=2000, help="calls timed per operation (default 2000)")
    args = parser.parse_args(argv)
    if args.others < 0 or args.repeat < 1:
        parser.error("--others must be ≥ 0 and --repeat ≥ 1")
    with tempfile.TemporaryDirectory(prefix="carrot-ledger-bench-") as folder:
        ledger = SpendLedger(folder)
        others = [SpendLedger(folder) for _ in range(args.others)]
        for other in others:
            other.spend(0.01)
        result = {
            "others": args.others, "repeat": args.repeat, "load_average_1m": round(os.getloadavg()[0], 2),
            "write_us": microseconds_per_call(lambda: ledger.spend(1e-6), args.repeat),
            "sum_of_day_us": microseconds_per_call(ledger.today, args.repeat),
            "served_us": microseconds_per_call(lambda: ledger.served(1e-6), args.repeat * 10),
        }
        result["per_exploration_us"] = round(5 * result["write_us"] + 2 * result["sum_of_day_us"], 1)
        for one in (ledger, *others):
            one.close()
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
