"""Small SPROUT-layout files for the data tests (synthetic rows in SPROUT's exact layout)."""

import json

import pyarrow as pa
import pyarrow.parquet as pq

MODELS = ["openai-gpt-4o-mini", "wxai-llama-3-1-8b-instruct", "aws-titan-text-premier-v1"]
PRICES = {
    "openai-gpt-4o-mini": {"input": 0.15, "output": 0.6},
    "wxai-llama-3-1-8b-instruct": {"input": 0.2, "output": 0.2},
    "aws-titan-text-premier-v1": {"input": 0.5, "output": 1.5},
}


def sprout_rows(n: int = 6, models=MODELS) -> list[dict]:
    """SPROUT rows: metadata columns then one {score, num_input_tokens, num_output_tokens} struct per model."""
    rows = []
    for i in range(n):
        row = {
            "key": f"gpqa-{i}",
            "dataset": ["gpqa", "math", "musr"][i % 3],
            "dataset_level": "hard",
            "dataset_idx": i,
            "prompt": f"Question {i}: what is {i} + {i}?",
            "golden_answer": str(2 * i),
        }
        for j, model in enumerate(models):
            row[model] = {"score": round(((i + j) % 11) / 10, 1), "num_input_tokens": 20 + i, "num_output_tokens": 5 * (j + 1)}
        rows.append(row)
    return rows


def write_parquet(rows, path, schema=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
    return path


def write_jsonl(rows, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def write_prices(folder, prices=PRICES, recorded_on="2025-02-01"):
    (folder / "prices.json").write_text(json.dumps({"recorded_on": recorded_on, "source": "test", "prices": prices}))
