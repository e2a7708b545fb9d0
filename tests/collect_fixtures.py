"""Shared pieces of the `carrot collect` tests: a tiny scorer, prompt files, upstream files, replay fakes."""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

from carrot_hub.collect.contracts import Score, ScoringInput
from carrot_hub.serving.fake_upstream import FakeUpstream, FakeUpstreamConfig
from carrot_hub.serving.local_server import LocalServer

SAMPLE_RESPONSES = Path(__file__).parent / "data" / "zeroeval-responses-sample.parquet"
SAMPLE_MODELS = ["gpt-4o-mini-2024-07-18", "Meta-Llama-3-8B-Instruct", "claude-3-5-sonnet-20240620"]


class ContainsScorer:
    """Test-only scorer: 1 when the reference occurs in the answer, 0 when not, unscored when the answer is empty."""

    needs_reference = True
    needs_tests = False

    def __init__(self, name: str = "contains"):
        self.name = name
        self.calls = 0

    async def score(self, item: ScoringInput) -> Score:
        self.calls += 1
        if not item.answer.strip():
            return Score(None, "empty answer", self.name)
        return Score(1.0 if item.reference in item.answer else 0.0, None, self.name)


def write_prompts(path: Path, n: int = 6, reference: str | None = "w3", with_keys: bool = True) -> Path:
    rows = []
    for i in range(n):
        row = {"prompt": f"Question {i}: say some words.", "task": "words"}
        if with_keys:
            row["key"] = f"q{i}"
        if reference is not None:
            row["reference"] = reference
        rows.append(row)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_upstreams(path: Path, upstreams: dict, **extra) -> Path:
    """An upstreams file for `{name: (fake, server)}` (see serve_fixtures.fake_upstreams)."""
    entries = {name: {"base_url": server.base_url, "model": fake.config.model, **extra}
               for name, (fake, server) in upstreams.items()}
    path.write_text(json.dumps(entries))
    return path


@contextmanager
def replay_upstream(latency_s: float = 0.0):
    """A fake upstream in replay mode over the packaged zeroeval-2024 table and the 120-answer sample."""
    from carrot_hub.data.packaged import packaged_table_dir
    from carrot_hub.serving.replay_record import ReplayRecord

    record = ReplayRecord.from_files(packaged_table_dir("zeroeval-2024"), SAMPLE_RESPONSES)
    fake = FakeUpstream(FakeUpstreamConfig(model="replay", latency_s=latency_s, replay=record))
    with LocalServer(fake.app) as server:
        yield fake, server


def replay_upstreams_file(path: Path, server, models=SAMPLE_MODELS, **extra) -> Path:
    path.write_text(json.dumps({m: {"base_url": server.base_url, "model": m, **extra} for m in models}))
    return path


def sample_prompt_file(path: Path, n_per_task: int = 20) -> Path:
    """The sample's prompts (keys, text, golden answers) as a JSONL prompt set."""
    import pyarrow.parquet as pq

    from carrot_hub.data.packaged import packaged_table_dir

    keys = set(pq.read_table(SAMPLE_RESPONSES, columns=["key"]).column("key").to_pylist())
    table = pq.read_table(packaged_table_dir("zeroeval-2024") / "data" / "train-00000-of-00001.parquet",
                          columns=["key", "dataset", "prompt", "golden_answer"]).to_pylist()
    rows, taken = [], {}
    for row in table:
        if row["key"] in keys and taken.get(row["dataset"], 0) < n_per_task:
            taken[row["dataset"]] = taken.get(row["dataset"], 0) + 1
            rows.append(row)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def sample_rows() -> list[dict]:
    """The 120-answer sample's rows (key, model, response, score), each with its prompt's text."""
    import pyarrow.parquet as pq

    from carrot_hub.data import load_routing_table
    from carrot_hub.data.packaged import packaged_table_dir

    prompts = {}
    for split in ("train", "test"):
        table = load_routing_table(str(packaged_table_dir("zeroeval-2024")), split=split, progress=False)
        prompts.update(zip(table.prompt_ids, table.prompts))
    return [{**row, "prompt": prompts[row["key"]]} for row in pq.read_table(SAMPLE_RESPONSES).to_pylist()]


def sample_knn_router(rows: list[dict], prompts: list[str]):
    """A static-encoder kNN router (k = 2) over the sample's models, its memory `prompts` with their recorded scores."""
    import numpy as np

    from carrot_hub.building import fit_knn, new_router
    from carrot_hub.data import load_routing_table
    from carrot_hub.data.packaged import packaged_table_dir
    from carrot_hub.data.routing_table import RoutingTable

    prices = load_routing_table(str(packaged_table_dir("zeroeval-2024")), split="train", progress=False).prices
    prices = {m: prices[m] for m in SAMPLE_MODELS}
    score_of = {(row["prompt"], row["model"]): row["score"] for row in rows}
    router = new_router(SAMPLE_MODELS, prices, predictor_kind="knn", knn_k=2, encoder_kind="static", progress=False)
    scores = np.array([[score_of[(p, m)] for m in SAMPLE_MODELS] for p in prompts], dtype=float)
    tokens = np.full_like(scores, 50.0)
    table = RoutingTable(list(prompts), [f"m{i}" for i in range(len(prompts))], ["t"] * len(prompts), list(SAMPLE_MODELS),
                         scores=scores, input_tokens=tokens, output_tokens=tokens, prices=prices)
    return fit_knn(router, router.encode(list(prompts)).embeddings, table)
