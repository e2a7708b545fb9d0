"""What the gateway benchmarks set up on loopback: server processes (started, awaited, stopped), the
environment they run in, and the prompts the clients send.

    env = server_env(root)
    fake, url = start_process([sys.executable, "-m", "carrot_hub.serving.fake_upstream", "--port", "0"],
                              r"on (http://\\S+/v1)", env, 60, work / "fake.log")
    ...
    stop_process(fake)
"""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import time
from pathlib import Path

SERVER_URL = r"on (http://\S+/v1)"  # the line `carrot serve` and the fake upstream print once listening


def server_env(root: Path) -> dict:
    """The environment of a benchmark's server processes: offline, no gateway key, `root` importable first."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env["PYTHONPATH"] = str(root) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("CARROT_API_KEY", None)
    return env


def start_process(command: list[str], pattern: str, env: dict, timeout_s: float, log_file: Path):
    """Start a server process, its output going to `log_file`, and wait for the line announcing its URL:
    `(process, the pattern's first group)`; `RuntimeError` with the log's tail when it does not start."""
    handle = open(log_file, "w")
    process = subprocess.Popen(command, env=env, text=True, stdout=handle, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = re.search(pattern, log_file.read_text())
        if found:
            return process, found.group(1)
        if process.poll() is not None:
            break
        time.sleep(0.2)
    process.kill()
    raise RuntimeError(f"{command[2:4]} did not start:\n{log_file.read_text()[-2000:]}")


def stop_process(process: subprocess.Popen, timeout_s: float = 60) -> int:
    """SIGINT (a clean shutdown: logs flushed), then a kill after `timeout_s`; the exit code."""
    process.send_signal(signal.SIGINT)
    try:
        return process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait()


def routerbench_test_prompts(seed: int = 0) -> list[str]:
    """The default table's (RouterBench's) non-empty test prompts, shuffled with `seed`."""
    import pyarrow.parquet as pq

    from ..default import DEFAULT_DATA_DIR

    table = pq.read_table(next((DEFAULT_DATA_DIR / "data").glob("test-*.parquet")), columns=["prompt"])
    prompts = [p for p in table.column("prompt").to_pylist() if p and p.strip()]
    random.Random(seed).shuffle(prompts)
    return prompts
