"""scripts/collect_demo.sh end to end, on fewer prompts and shorter answers: two real local LLMs
(SmolLM2-135M-Instruct and Gemma 3 270M) behind the local server, `carrot collect`, `carrot train`, `carrot route`."""

import os
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_collect_demo_collects_trains_and_routes_with_two_real_llms():
    env = {**os.environ, "CARROT_SKIP_SETUP": "1", "DEMO_PROMPTS": "10", "DEMO_MAX_TOKENS": "24",
           "DEMO_TIMEOUT": "3000"}
    run = subprocess.run(["bash", "scripts/collect_demo.sh"], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=3600)
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-3000:]
    # the collection's per-model summary names both upstreams, and the router was trained on both
    assert "smollm2-135m" in output and "gemma3-270m" in output
    assert re.search(r"wrote \S+ \(knn, 2 candidates, 10 prompts\)", output), output[-3000:]
    routed = [line for line in output.splitlines() if re.match(r"\s*\d+\s+(smollm2-135m|gemma3-270m)\s", line)]
    assert len(routed) >= 6, output[-3000:]  # three prompts at each of two μ
    assert re.search(r"demo finished in \d+ s", output)
