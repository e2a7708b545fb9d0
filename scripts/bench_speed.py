"""Speed of the embedded default router on the RouterBench prompts, against its own encoder's limit.

    python scripts/bench_speed.py [--threads 2] [--batch-size 64] [--repeats 3] [--latency-samples 200]

Reports, in one run:
- prompts/s of `route()` and of the bare encoder forward pass on the SAME tokenized, length-sorted,
  padded batches; their ratio (target ≥ 0.9) is the figure of merit: what routing adds on top
  of the encoder (tokenizing, sorting, padding, pooling, kNN, the decision);
- median and 95th-percentile latency of routing one prompt (target p50 < 25 ms on 2 cores);
- prompts/s of routing from precomputed embeddings (kNN + decision, no encoder);
- the cost of changing μ or prices without re-encoding: decisions for 10,000 prompts × 1,000 μ
  values (target < 2 s) and one re-pricing of 10,000 prompts;
- peak resident memory.
The last line is one JSON object with every figure.
"""

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

import carrot_hub  # noqa: E402
from carrot_hub.default import DEFAULT_DATA_DIR  # noqa: E402
from carrot_hub.modeling_carrot import PromptEncoding, choose_candidates, pad_batch, predicted_cost  # noqa: E402
from carrot_hub.precision import ENCODER_DTYPE_CHOICES, resolve_encoder_dtype  # noqa: E402


def load_prompts() -> list[str]:
    """All RouterBench prompts shipped with the package (train + test)."""
    from carrot_hub.data import load_routing_table

    prompts = []
    for split in ("train", "test"):
        prompts.extend(load_routing_table(str(DEFAULT_DATA_DIR), split=split).prompts)
    return prompts


def same_batches(router, prompts: list[str], batch_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The batches route() builds: tokenized once, sorted by length, padded to each batch's longest."""
    token_ids, _, _ = router._tokenize(prompts)
    order = sorted(range(len(prompts)), key=lambda i: len(token_ids[i]))
    pad_id = router.tokenizer.pad_token_id or 0
    return [pad_batch([token_ids[i] for i in order[s : s + batch_size]], pad_id) for s in range(0, len(order), batch_size)]


@torch.inference_mode()
def time_encoder(router, batches) -> float:
    started = time.perf_counter()
    for input_ids, attention_mask in batches:
        router.encoder(input_ids=input_ids, attention_mask=attention_mask)
    return time.perf_counter() - started


def time_route(router, prompts, batch_size) -> float:
    started = time.perf_counter()
    router.route(prompts, batch_size=batch_size)
    return time.perf_counter() - started


def one_prompt_latency(router, sample: list[str]) -> tuple[float, float]:
    """Median and 95th-percentile milliseconds of `router.route(prompt)`, one prompt at a time."""
    for prompt in sample[:10]:
        router.route(prompt)
    latencies = []
    for prompt in sample:
        started = time.perf_counter()
        router.route(prompt)
        latencies.append((time.perf_counter() - started) * 1000)
    latencies.sort()
    p95 = latencies[min(len(latencies) - 1, int(round(0.95 * (len(latencies) - 1))))]
    return statistics.median(latencies), p95


def tile(tensor: torch.Tensor, n: int) -> torch.Tensor:
    repeats = -(-n // tensor.shape[0])
    return tensor.repeat(repeats, *([1] * (tensor.ndim - 1)))[:n]


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default: 2)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3, help="timed passes of route() and the encoder (best kept)")
    parser.add_argument("--latency-samples", type=int, default=200)
    parser.add_argument("--limit", type=int, default=None, help="use only the first N prompts (quick runs)")
    parser.add_argument("--dtype", choices=ENCODER_DTYPE_CHOICES, default="auto",
                        help="encoder dtype, as `carrot route --dtype` (default: auto)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    encoder_dtype = str(resolve_encoder_dtype(args.dtype)).removeprefix("torch.")
    router = carrot_hub.default_router(dtype=args.dtype)
    prompts = load_prompts()[: args.limit]
    n = len(prompts)
    print(f"router: {router.config.predictor_kind}, {router.config.num_candidates} candidates, "
          f"memory {router.config.knn_memory_size}, encoder in {encoder_dtype}, prompts cut to "
          f"{router.config.max_prompt_tokens} tokens; {n} RouterBench prompts; torch threads {torch.get_num_threads()}; "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs", flush=True)

    # 1. route() against the bare encoder on the same batches. Interleaved passes, best of each,
    #    so that a noisy neighbour on the machine does not favour one side.
    batches = same_batches(router, prompts, args.batch_size)
    router.route(prompts[: args.batch_size], batch_size=args.batch_size)  # warm-up
    time_encoder(router, batches[:2])
    encoder_times, route_times = [], []
    for _ in range(args.repeats):
        encoder_times.append(time_encoder(router, batches))
        route_times.append(time_route(router, prompts, args.batch_size))
    encoder_pps, route_pps = n / min(encoder_times), n / min(route_times)
    ratio = route_pps / encoder_pps
    print(f"encoder forward only : {encoder_pps:8.1f} prompts/s  (best of {args.repeats}: {min(encoder_times):.2f} s)")
    print(f"route()              : {route_pps:8.1f} prompts/s  (best of {args.repeats}: {min(route_times):.2f} s)")
    print(f"route / encoder      : {ratio:.3f}   (target ≥ 0.9)")

    # 2. One-prompt latency, end to end through route(); float32's beside it when "auto" chose bfloat16.
    step = max(1, n // args.latency_samples)
    sample = prompts[::step][: args.latency_samples]
    p50, p95 = one_prompt_latency(router, sample)
    print(f"one-prompt latency   : p50 {p50:.1f} ms, p95 {p95:.1f} ms over {len(sample)} prompts, "
          f"encoder in {encoder_dtype} (target p50 < 25 ms)")
    float32_p50 = float32_p95 = None
    if encoder_dtype != "float32":
        float32_router = carrot_hub.default_router(dtype="float32")
        float32_p50, float32_p95 = one_prompt_latency(float32_router, sample)
        del float32_router
        print(f"  same, float32      : p50 {float32_p50:.1f} ms, p95 {float32_p95:.1f} ms")

    # 3. Routing from precomputed embeddings (kNN / heads + decision, no encoder), on 10,000 prompts.
    encoding = router.encode(prompts, batch_size=args.batch_size)
    big = PromptEncoding(tile(encoding.embeddings, 10_000), tile(encoding.input_tokens, 10_000), [False] * 10_000)
    started = time.perf_counter()
    predictions = router.predict_encoded(big)
    decision = router.decide(predictions, mu=0.5)
    embedded_s = time.perf_counter() - started
    embedded_pps = 10_000 / embedded_s
    print(f"from embeddings      : {embedded_pps:8.0f} prompts/s  (10,000 prompts, predict_encoded + decide: {embedded_s:.3f} s)")

    # 4. Changing μ or prices reuses the predictions: 1,000 μ values × 10,000 prompts.
    input_prices, output_prices = router.resolve_prices()
    mus = torch.linspace(0, 1, 1000)
    started = time.perf_counter()
    cost = predicted_cost(predictions.input_tokens, predictions.output_tokens, input_prices, output_prices)
    spend = torch.empty(1000)
    for start in range(0, 1000, 50):  # 50 μ at a time: a (50, 10k, n_models) utility, not the whole cube
        indices, _, _ = choose_candidates(predictions.quality, cost, mus[start : start + 50], router.config.cost_scale)
        spend[start : start + 50] = cost.gather(1, indices.T).mean(0)
    sweep_s = time.perf_counter() - started
    monotone = bool((spend[1:] <= spend[:-1] + 1e-12).all())
    print(f"μ sweep              : 1,000 μ × 10,000 prompts in {sweep_s:.3f} s (target < 2 s); "
          f"spend per prompt ${float(spend[0]):.5f} at μ=0 → ${float(spend[-1]):.6f} at μ=1, monotone: {monotone}")
    new_prices = {name: {"input": 0.5 * p["input"], "output": 0.5 * p["output"]}
                  for name, p in router.config.prices.items()}
    started = time.perf_counter()
    repriced = router.decide(predictions, mu=0.5, prices=new_prices)
    reprice_s = time.perf_counter() - started
    print(f"re-pricing           : 10,000 prompts decided with new prices in {reprice_s * 1000:.1f} ms "
          f"(no re-encoding; {sum(a != b for a, b in zip(decision.models, repriced.models))} choices changed)")

    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak memory (ru_maxrss): {peak_mb:.0f} MB")
    result = {
        "n_prompts": n,
        "threads": torch.get_num_threads(),
        "batch_size": args.batch_size,
        "encoder_prompts_per_s": round(encoder_pps, 1),
        "route_prompts_per_s": round(route_pps, 1),
        "route_vs_encoder_ratio": round(ratio, 4),
        "encoder_dtype": encoder_dtype,
        "max_prompt_tokens": router.config.max_prompt_tokens,
        "latency_p50_ms": round(p50, 2),
        "latency_p95_ms": round(p95, 2),
        "latency_p50_ms_float32": None if float32_p50 is None else round(float32_p50, 2),
        "latency_p95_ms_float32": None if float32_p95 is None else round(float32_p95, 2),
        "from_embeddings_prompts_per_s": round(embedded_pps, 0),
        "decide_10k_x_1000_s": round(sweep_s, 4),
        "reprice_10k_ms": round(reprice_s * 1000, 2),
        "peak_rss_mb": round(peak_mb, 1),
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
    sys.exit(0)
