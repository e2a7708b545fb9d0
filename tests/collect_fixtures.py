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
