"""RouterBench CSVs (RouterDC's train/test re-split) -> SPROUT-layout routing data.

Input folder: `<task>_<split>.csv` files with columns `sample_id`, `prompt` (a Python-list-like string),
`eval_name`, `<model>` (correctness 0/1, empty = missing), `<model>|model_response`, `<model>|total_cost`.
Models are the columns that have a `|model_response` partner; nothing is listed in code.
"""

from __future__ import annotations

import ast
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .prices import read_prices_file
from .routing_table import RoutingTable
from .tokens import count_tokens, load_counting_tokenizer

RESPONSE_SUFFIX = "|model_response"
TOKENIZER_NOTE = (
    "Token counts use one fixed tokenizer for every model: the WordPiece tokenizer of "
    "sentence-transformers/all-MiniLM-L6-v2 (uncased, special tokens not counted). `num_input_tokens` counts the "
    "prompt text, `num_output_tokens` the model's response text. They are comparable across models, not the "
    "providers' billed counts."
)


def parse_list_text(value: str, where: str) -> str:
    """`"['a', 'b']"` -> `"a\\n\\nb"` (safe literal parsing; identical consecutive parts collapse to one)."""
    try:
        parsed = ast.literal_eval(value)
    except (ValueError, SyntaxError):
        raise ValueError(f"{where}: expected a Python-list-like string, got {value[:80]!r}.") from None
    if isinstance(parsed, str):
        return parsed
    if not isinstance(parsed, (list, tuple)) or not all(isinstance(p, str) for p in parsed):
        raise ValueError(f"{where}: expected a list of strings, got {type(parsed).__name__}.")
    parts = [p for i, p in enumerate(parsed) if i == 0 or p != parsed[i - 1]]
    return "\n\n".join(parts)


def read_routerbench_split(folder: str | os.PathLike, split: str, tokenizer=None, progress: bool = True):
    """
    All `*_<split>.csv` files of `folder` as one RoutingTable (no prices) plus extra SPROUT columns.

    Returns:
        `(table, extra_columns)`: scores 0/1 with NaN for empty cells; input/output tokens counted with
        `tokenizer` (default: all-MiniLM-L6-v2's). `extra_columns` has `dataset_idx` (RouterBench's sample_id).
    """
    tokenizer = tokenizer or load_counting_tokenizer()
    data, models = _read_split_frame(folder, split)
    prompts = [parse_list_text(v, f"{data['_file'][i]} row {i} prompt") for i, v in enumerate(data["prompt"])]
    sample_ids = data["sample_id"].astype(str).tolist()
    keys = _row_keys(data)

    scores = data[models].to_numpy(dtype=np.float64)
    bad = ~np.isnan(scores) & ~np.isin(scores, (0.0, 1.0))
    if bad.any():
        i, j = np.argwhere(bad)[0]
        raise ValueError(f"Correctness of {models[j]!r} at row {i} is {scores[i, j]}; RouterBench scores are 0 or 1.")

    input_counts = count_tokens(prompts, tokenizer, progress=progress, desc=f"{split} prompt tokens")
    output_tokens = np.zeros((len(data), len(models)))
    for j, model in enumerate(models):
        responses = _response_texts(data, model)
        output_tokens[:, j] = count_tokens(responses, tokenizer, progress=progress, desc=f"{split} {model} tokens")
        output_tokens[data[model + RESPONSE_SUFFIX].isna().to_numpy(), j] = np.nan
    table = RoutingTable(
        prompts=prompts,
        prompt_ids=keys,
        tasks=data["eval_name"].astype(str).tolist(),
        models=list(models),
        scores=scores,
        input_tokens=np.repeat(input_counts[:, None], len(models), axis=1),
        output_tokens=output_tokens,
        split=split,
        metadata={"source_files": sorted(set(data["_file"]))},
    )
    return table, {"dataset_idx": sample_ids}



def _read_split_frame(folder: str | os.PathLike, split: str):
    """`(frame, models)`: every `*_<split>.csv` of `folder` in one pandas frame (with `_file`), and the model names."""
    import pandas as pd

    folder = Path(folder)
    files = sorted(folder.glob(f"*_{split}.csv"))
    if not files:
        raise FileNotFoundError(f"No *_{split}.csv files in {folder}.")
    models: list[str] | None = None
    frames = []
    for path in files:
        frame = pd.read_csv(path, dtype={"sample_id": str, "prompt": str, "eval_name": str}, keep_default_na=True)
        found = [c[: -len(RESPONSE_SUFFIX)] for c in frame.columns if c.endswith(RESPONSE_SUFFIX)]
        file_models = [c for c in frame.columns if c in found]  # the score columns' order
        if models is None:
            models = file_models
        elif set(file_models) != set(models):
            raise ValueError(f"{path.name} has models {sorted(file_models)}, other files have {sorted(models)}.")
        frame["_file"] = path.name
        frames.append(frame)
    return pd.concat(frames, ignore_index=True), models


def _row_keys(data) -> list[str]:
    """
    The table's `key` of each row: RouterBench's sample_id. A few samples appear twice, each row holding
    some models' results: both rows are kept (as the source does) with ids made unique by RouterBench's
    global row number.
    """
    sample_ids = data["sample_id"].astype(str).tolist()
    duplicated = data["sample_id"].duplicated(keep=False).to_numpy()
    row_numbers = data["Unnamed: 0"].astype(str).tolist() if "Unnamed: 0" in data else [str(i) for i in range(len(data))]
    return [f"{s}#{r}" if dup else s for s, r, dup in zip(sample_ids, row_numbers, duplicated)]


def _response_texts(data, model: str) -> list[str]:
    """`model`'s answer per row, as its output tokens are counted ("" where the CSV has none)."""
    import pandas as pd

    column = data[model + RESPONSE_SUFFIX]
    return ["" if pd.isna(v) else parse_list_text(v, f"{model} response row {i}") for i, v in enumerate(column)]


def write_routerbench_responses(source: str | os.PathLike, output: str | os.PathLike,
                                splits: Sequence[str] = ("train", "test")) -> int:
    """
    Write RouterBench's recorded answers as one long parquet file `output` (`key`, `model`, `response`,
    `score`; the layout of ZeroEval's `responses/`), keyed as the converted table is, so the fake
    upstream can replay them (`ReplayRecord.from_files(table, output)`) and the replay judge grade them
    with RouterBench's own correctness. Cells without an answer or a score are left out. Returns the rows written.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns: dict[str, list] = {"key": [], "model": [], "response": [], "score": []}
    for split in splits:
        data, models = _read_split_frame(source, split)
        keys = _row_keys(data)
        for model in models:
            texts, scores = _response_texts(data, model), data[model].to_numpy(dtype=np.float64)
            answered = (~data[model + RESPONSE_SUFFIX].isna().to_numpy()) & ~np.isnan(scores)
            for i in np.flatnonzero(answered):
                columns["key"].append(keys[i])
                columns["model"].append(model)
                columns["response"].append(texts[i])
                columns["score"].append(float(scores[i]))
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), output)
    return len(columns["key"])

def convert_routerbench(
    source: str | os.PathLike,
    output: str | os.PathLike,
    prices_file: str | os.PathLike,
    splits: Sequence[str] = ("train", "test"),
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, RoutingTable]:
    """
    Convert the RouterBench CSV folder `source` into a SPROUT-layout dataset folder `output`
    (parquet per split, README.md card, prices.json from `prices_file`). Response texts are dropped.
    Returns `{split: RoutingTable}` as written.
    """
    from .writing import write_sprout_dataset

    prices_document = read_prices_file(prices_file)
    tokenizer = load_counting_tokenizer()
    tables, extras = {}, {}
    for split in splits:
        tables[split], extras[split] = read_routerbench_split(source, split, tokenizer=tokenizer, progress=progress)
    models = tables[splits[0]].models
    unpriced = [m for m in models if m not in prices_document["prices"]]
    if unpriced:
        raise ValueError(f"{prices_file} has no price for {unpriced}.")
    prices = {m: prices_document["prices"][m] for m in models}
    for table in tables.values():
        table.prices = prices
    missing = {name: int((~table.observed).sum()) for name, table in tables.items()}
    notes = (
        f"{TOKENIZER_NOTE}\n\n"
        "Scores are RouterBench's correctness (1.0 correct, 0.0 wrong). Empty correctness cells in the CSVs are kept "
        f"as null scores (missing, not wrong): {', '.join(f'{n} in {s}' for s, n in missing.items())}. "
        "A few arc-challenge samples appear in two rows, each holding some models' results; both rows are kept as in "
        "the source, with `key` = `<sample_id>#<RouterBench row number>` for those (`dataset_idx` keeps the sample_id). "
        "Prompts are RouterBench's (few-shot examples included); list-like prompt strings are parsed and joined with "
        "blank lines, identical repeated parts collapsed. Response texts and RouterBench's dollar costs are not "
        "carried over (costs follow from the token counts and `prices.json`); `golden_answer` and `dataset_level` "
        "are null (RouterBench gives correctness only)."
    )
    provenance = (
        "RouterBench (Hu et al., 2024, *RouterBench: A Benchmark for Multi-LLM Routing System*, arXiv:2403.12031; "
        "MIT licence), zero-shot slice with the tasks ARC-Challenge, MBPP and Winogrande, in the train/test re-split "
        "made by the RouterDC authors (Chen et al., 2024). The source split is kept. Converted to SPROUT's layout by "
        "`scripts/convert_routerbench.py` of carrot_hub."
    )
    write_sprout_dataset(
        tables,
        output,
        pretty_name="RouterBench zero-shot (ARC-Challenge, MBPP, Winogrande) in SPROUT layout",
        description=(
            "For every prompt, whether each of 11 LLMs answered correctly, with input and output token counts, "
            "for training and evaluating cost-aware LLM routers such as CARROT."
        ),
        license="mit",
        provenance=provenance,
        prices=prices,
        prices_recorded_on=prices_document["recorded_on"],
        prices_source=prices_document["source"],
        notes=notes,
        extra_columns=extras,
        overwrite=overwrite,
    )
    return tables
