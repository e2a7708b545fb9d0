#!/usr/bin/env python
"""Convert the RouterBench zero-shot CSVs into a SPROUT-layout dataset folder and report what was written.

    python scripts/convert_routerbench.py                                  # regenerate the packaged copy
    python scripts/convert_routerbench.py --source DIR --output DIR [--overwrite]
"""

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", default=os.environ.get("ROUTERBENCH_DIR", str(ROOT.parent / "shared" / "data" / "routerbench-0shot")),
                        help="folder of <task>_<split>.csv files")
    parser.add_argument("--output", default=str(ROOT / "carrot_hub" / "default_data" / "routerbench-0shot"))
    parser.add_argument("--prices", default=str(ROOT / "scripts" / "routerbench_prices.json"))
    parser.add_argument("--overwrite", action="store_true", help="replace the files of an existing output folder")
    args = parser.parse_args(argv)

    from carrot_hub.data.routerbench import convert_routerbench

    if not Path(args.source).is_dir():
        print(f"error: no RouterBench folder at {args.source} (pass --source)", file=sys.stderr)
        return 2
    try:
        tables = convert_routerbench(args.source, args.output, args.prices, overwrite=args.overwrite)
    except FileExistsError:
        print(f"error: {args.output} is not empty; pass --overwrite to replace its data files, or choose --output", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    report = {}
    print(f"{'split':6} {'rows':>6} {'models':>6} {'missing':>8}  per model missing")
    for split, table in tables.items():
        per_model = {m: int(n) for m, n in zip(table.models, (~table.observed).sum(axis=0)) if n}
        report[split] = {"rows": len(table), "models": len(table.models), "missing_cells": int((~table.observed).sum()),
                         "missing_by_model": per_model}
        print(f"{split:6} {len(table):6d} {len(table.models):6d} {report[split]['missing_cells']:8d}  {per_model}")
    sizes = {p.name: p.stat().st_size for p in Path(args.output).rglob("*") if p.is_file()}
    print(f"wrote {args.output}: {sum(sizes.values()) / 1e6:.2f} MB")
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
