"""How often carrot_hub's scorers agree with ZeroEval's published scores on ZeroEval's own raw answers.

    python scripts/scorer_agreement.py [--data ../shared/data/zeroeval-2024] [--show 20] [--seed 0]

`number` is run on every GSM8K answer, `exact` on every CRUXEval-O answer, against the table's
`golden_answer`; each result is compared with ZeroEval's 0/1 (`responses/*.parquet`, column `score`).
Prints per model the agreement (an unscored answer counts as a disagreement), each disagreement's
kind, `--show` disagreements drawn at random (seeded) for reading by hand, and, last, one JSON line.

Kinds: "we 1, ZeroEval 0" / "we 0, ZeroEval 1" / "unscored", each with how our scorer found the
final answer (a JSON field, `####`, `\\boxed{}`, "the answer is", or the whole reply).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
from collections import Counter, defaultdict
from pathlib import Path

import pandas as pd

from carrot_hub.collect.answer_extraction import final_answer_span
from carrot_hub.collect.contracts import ScoringInput
from carrot_hub.collect.scorers import build_scorer



def default_data() -> Path:
    """`$CARROT_SHARED_DATA/zeroeval-2024`, else the first `shared/data/zeroeval-2024` beside or above the checkout."""
    if os.environ.get("CARROT_SHARED_DATA"):
        return Path(os.environ["CARROT_SHARED_DATA"]) / "zeroeval-2024"
    root = Path(__file__).resolve().parents[1]
    for folder in (root, *root.parents):
        if (folder / "shared" / "data" / "zeroeval-2024").is_dir():
            return folder / "shared" / "data" / "zeroeval-2024"
    return root.parent / "shared" / "data" / "zeroeval-2024"
CHECKS = (("gsm8k", "number"), ("cruxeval", "exact"))


def load(data: Path, dataset: str) -> pd.DataFrame:
    """The raw answers of `dataset` joined with the table's prompt and golden answer (both splits)."""
    table = pd.concat([pd.read_parquet(path) for path in sorted((data / "data").glob("*.parquet"))])
    table = table[["key", "prompt", "golden_answer"]].drop_duplicates("key")
    answers = pd.read_parquet(data / "responses" / f"responses-{dataset}.parquet")
    joined = answers.merge(table, on="key", how="left", validate="many_to_one")
    if joined["golden_answer"].isna().any():
        raise SystemExit(f"{int(joined['golden_answer'].isna().sum())} answers have no row in the table.")
    return joined


async def score_all(frame: pd.DataFrame, spec: str) -> list:
    scorer = build_scorer(spec, ask=None, candidates=(), allow_code_execution=False)
    return [await scorer.score(ScoringInput(prompt=p, answer=a, reference=r))
            for p, a, r in zip(frame["prompt"], frame["response"], frame["golden_answer"])]


def kind_of(ours: float | None, theirs: int, found_by: str) -> str:
    if ours is None:
        return f"unscored ({found_by})"
    return f"we {ours:g}, ZeroEval {theirs} ({found_by})"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=None, help="the zeroeval-2024 folder (default: shared/data/zeroeval-2024)")
    parser.add_argument("--show", type=int, default=20, help="disagreements to print for reading by hand")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    args.data = args.data or default_data()

    result: dict = {}
    disagreements: list[dict] = []
    for dataset, spec in CHECKS:
        frame = load(args.data, dataset)
        scores = asyncio.run(score_all(frame, spec))
        per_model: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])  # agree, total, unscored
        kinds: Counter = Counter()
        for row, score in zip(frame.itertuples(index=False), scores):
            tally = per_model[row.model]
            tally[1] += 1
            tally[2] += score.value is None
            if score.value is not None and score.value == row.score:
                tally[0] += 1
                continue
            kind = kind_of(score.value, int(row.score), final_answer_span(row.response).found_by)
            kinds[kind] += 1
            disagreements.append({"dataset": dataset, "key": row.key, "model": row.model, "kind": kind,
                                  "ours": score.value, "zeroeval": int(row.score), "reason": score.reason,
                                  "reference": row.golden_answer, "response": row.response})
        agreement = {model: round(agree / total, 4) for model, (agree, total, _) in sorted(per_model.items())}
        result[dataset] = {
            "scorer": spec,
            "answers": len(frame),
            "agreement_overall": round(sum(a for a, _, _ in per_model.values()) / len(frame), 4),
            "agreement_min": min(agreement.values()),
            "models_below_99": sorted(m for m, v in agreement.items() if v < 0.99),
            "unscored": sum(u for _, _, u in per_model.values()),
            "agreement": agreement,
            "disagreements_by_kind": dict(kinds.most_common()),
        }
        print(f"\n== {dataset} ({spec}): {len(frame)} answers, agreement {result[dataset]['agreement_overall']:.2%}")
        for model, value in agreement.items():
            print(f"  {model:34s} {value:.2%}")
        for kind, count in kinds.most_common():
            print(f"  {count:5d}  {kind}")

    shown = random.Random(args.seed).sample(disagreements, min(args.show, len(disagreements)))
    for number, item in enumerate(shown, 1):
        print(f"\n-- #{number} {item['dataset']} {item['key']} {item['model']}: {item['kind']}; {item['reason']}")
        print(f"   reference: {item['reference']!r}")
        print("   response: " + item["response"][-700:].replace("\n", "\n   | "))
    result["shown"] = [{k: item[k] for k in ("dataset", "key", "model", "kind")} for item in shown]
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
