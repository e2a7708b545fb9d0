"""Speed of the embedded default routers on the RouterBench prompts, static and transformer encoders in one run.

    python scripts/bench_speed.py [--encoders static,transformer] [--threads 2] [--batch-size 64] [--repeats 3]

Reports, for each encoder kind (the static one first, so that the peak memory it reports is its own):
- prompts/s of `route()` on all RouterBench prompts at once, and of the encoder alone on the same
  prompts (transformer: the bare forward pass on the same tokenized, sorted, padded batches;
  static: tokenizing and the table lookup, i.e. `encode()`); their ratio is what routing adds;
- for the static encoder, prompts/s of its tokenizing alone (the word-cached path route() takes, and
  the Rust tokenizer on whole prompts for comparison), of route() once with its word cache emptied,
  and of route() on the same prompts cut to their last `--short-chars` characters (throughput
  depends on prompt length: RouterBench prompts average ~1,500 characters);
- median and 95th-percentile latency of routing one prompt, end to end through `route()`;
- peak resident memory after that encoder's runs (ru_maxrss, a high-water mark) and the size of
  its `model.safetensors`.
With `--static-mlp DIR`, also route() throughput and one-prompt latency of a static router with
MLP heads instead of the kNN memory (trained into DIR with `carrot train --kind mlp --encoder static`
on the packaged table when DIR holds no router yet, ~40 s): the heads cost less than the kNN search.
Then, once (the predictor and the decision do not depend on the encoder): routing from precomputed
embeddings, and 1,000 μ × 10,000 prompts decided from cached predictions, and one re-pricing.
The static/transformer ratios come last; the last line is one JSON object with every figure.
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
from carrot_hub.precision import ENCODER_DTYPE_CHOICES  # noqa: E402

ENCODERS = ("static", "transformer")


def load_prompts() -> list[str]:
    """All RouterBench prompts shipped with the package (train + test)."""
    from carrot_hub.data import load_routing_table

    prompts = []
    for split in ("train", "test"):
        prompts.extend(load_routing_table(str(DEFAULT_DATA_DIR), split=split, progress=False).prompts)
    return prompts


def same_batches(router, prompts: list[str], batch_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The batches route() builds for a transformer: tokenized once, sorted by length, padded per batch."""
    token_ids, _, _ = router._tokenize(prompts)
    order = sorted(range(len(prompts)), key=lambda i: len(token_ids[i]))
    pad_id = router.tokenizer.pad_token_id or 0
    return [pad_batch([token_ids[i] for i in order[s : s + batch_size]], pad_id) for s in range(0, len(order), batch_size)]


def seconds(function) -> float:
    started = time.perf_counter()
    function()
    return time.perf_counter() - started


@torch.inference_mode()
def encoder_only(router, prompts: list[str], batch_size: int):
    """A function running the encoder alone on `prompts`, as route() would feed it."""
    if router.is_static:
        return lambda: router.encode(prompts)
    batches = same_batches(router, prompts, batch_size)

    def run():
        with torch.inference_mode():
            for input_ids, attention_mask in batches:
                router.encoder(input_ids=input_ids, attention_mask=attention_mask)

    return run


def one_prompt_latency(router, sample: list[str]) -> tuple[float, float, float]:
    """
    Median and 95th-percentile wall milliseconds of `router.route(prompt)`, one prompt at a time,
    and the median CPU milliseconds (what a call costs on an idle core: on a shared machine the wall
    time also counts the time other processes held the core).
    """
    for prompt in sample[:20]:
        router.route(prompt)
    latencies, cpu = [], []
    for prompt in sample:
        started, started_cpu = time.perf_counter(), time.process_time()
        router.route(prompt)
        latencies.append((time.perf_counter() - started) * 1000)
        cpu.append((time.process_time() - started_cpu) * 1000)
    latencies.sort()
    p95 = latencies[min(len(latencies) - 1, int(round(0.95 * (len(latencies) - 1))))]
    return statistics.median(latencies), p95, statistics.median(cpu)


def best_of(repeats: int, *functions) -> list[float]:
    """Best wall time of each function over `repeats` interleaved passes (a noisy neighbour hits both)."""
    times = [[] for _ in functions]
    for _ in range(repeats):
        for slot, function in zip(times, functions):
            slot.append(seconds(function))
    return [min(slot) for slot in times]


def measure_encoder(kind: str, args, prompts: list[str], sample: list[str]) -> dict:
    router = carrot_hub.default_router(dtype=args.dtype, encoder=kind)
    n = len(prompts)
    dtype = str(next(router.encoder.parameters()).dtype).removeprefix("torch.")
    print(f"\n[{kind}] {router.config.predictor_kind}, k={router.config.knn_k}, memory {router.config.knn_memory_size}, "
          f"embeddings {router.embedding_size}-d, encoder in {dtype}, prompts cut to {router.config.max_prompt_tokens} tokens",
          flush=True)
    router.route(prompts[: args.batch_size], batch_size=args.batch_size)  # warm-up
    encode = encoder_only(router, prompts, args.batch_size)
    encoder_s, route_s = best_of(args.repeats, encode, lambda: router.route(prompts, batch_size=args.batch_size))
    result = {
        "encoder_dtype": dtype,
        "encoder_prompts_per_s": round(n / encoder_s, 1),
        "route_prompts_per_s": round(n / route_s, 1),
        "route_vs_encoder_ratio": round(encoder_s / route_s, 4),
    }
    print(f"encoder only         : {n / encoder_s:9.1f} prompts/s  (best of {args.repeats}: {encoder_s:.3f} s)")
    print(f"route()              : {n / route_s:9.1f} prompts/s  (best of {args.repeats}: {route_s:.3f} s; "
          f"{result['route_vs_encoder_ratio']:.3f} of the encoder's rate)")
    if router.is_static:
        backend = router.tokenizer.backend_tokenizer
        tokenize_s, backend_s = best_of(
            args.repeats,
            lambda: router._tokenize(prompts),
            lambda: backend.encode_batch_fast(prompts, add_special_tokens=False),
        )
        router.prompt_encoder.word_piece_cache = None  # the word cache starts empty: a first pass over unseen text
        cold_s = seconds(lambda: router.route(prompts, batch_size=args.batch_size))
        short = [prompt[-args.short_chars :] for prompt in prompts]
        (short_s,) = best_of(args.repeats, lambda: router.route(short, batch_size=args.batch_size))
        mean_tokens = float(router.encode(prompts).input_tokens.mean())
        short_tokens = float(router.encode(short).input_tokens.mean())
        result.update({
            "tokenizer_prompts_per_s": round(n / tokenize_s, 1),
            "backend_tokenizer_prompts_per_s": round(n / backend_s, 1),
            "route_cold_cache_prompts_per_s": round(n / cold_s, 1),
            "mean_prompt_tokens": round(mean_tokens, 1),
            "route_short_prompts_per_s": round(n / short_s, 1),
            "short_chars": args.short_chars,
            "short_mean_prompt_tokens": round(short_tokens, 1),
        })
        print(f"route(), cold cache  : {n / cold_s:9.1f} prompts/s  (one pass with the word cache emptied first)")
        print(f"tokenizing alone     : {n / tokenize_s:9.1f} prompts/s  (prompts of {mean_tokens:.0f} tokens on average; "
              f"the Rust tokenizer on whole prompts: {n / backend_s:.1f} prompts/s)")
        print(f"route(), short       : {n / short_s:9.1f} prompts/s  (the last {args.short_chars} characters of each "
              f"prompt, {short_tokens:.0f} tokens on average)")
    p50, p95, cpu_p50 = one_prompt_latency(router, sample)
    print(f"one-prompt latency   : p50 {p50:.2f} ms, p95 {p95:.2f} ms over {len(sample)} prompts "
          f"(CPU time p50 {cpu_p50:.2f} ms)")
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    weights_mb = os.path.getsize(os.path.join(router.name_or_path, "model.safetensors")) / 1e6
    print(f"model.safetensors    : {weights_mb:.1f} MB; peak memory so far (ru_maxrss): {peak_mb:.0f} MB")
    result.update({
        "latency_p50_ms": round(p50, 3),
        "latency_p95_ms": round(p95, 3),
        "latency_cpu_p50_ms": round(cpu_p50, 3),
        "peak_rss_mb": round(peak_mb, 1),
        "model_safetensors_mb": round(weights_mb, 1),
    })
    result["_router"] = router
    return result


def measure_static_mlp(folder: str, args, prompts: list[str], sample: list[str]) -> dict:
    """route() throughput and one-prompt latency of the static MLP router in `folder` (trained there first if missing)."""
    if not os.path.exists(os.path.join(folder, "config.json")):
        from training.train import main as train

        print(f"\ntraining a static MLP router on routerbench-0shot into {folder} (once)...", flush=True)
        code = train(["--data", "routerbench-0shot", "--kind", "mlp", "--encoder", "static", "--out", folder, "--no-progress"])
        if code != 0:
            raise SystemExit(f"training the static MLP router failed (exit {code})")
    router = carrot_hub.CarrotRouter.from_pretrained(folder)
    if not router.is_static or router.config.predictor_kind != "mlp":
        raise SystemExit(f"--static-mlp {folder} holds a {router.config.encoder_kind} {router.config.predictor_kind} router, not a static MLP one")
    n = len(prompts)
    router.route(prompts[: args.batch_size])
    (route_s,) = best_of(args.repeats, lambda: router.route(prompts, batch_size=args.batch_size))
    p50, p95, cpu_p50 = one_prompt_latency(router, sample)
    print(f"\n[static, MLP heads] route(): {n / route_s:9.1f} prompts/s; one-prompt latency p50 {p50:.2f} ms, p95 {p95:.2f} ms")
    return {"route_prompts_per_s": round(n / route_s, 1), "latency_p50_ms": round(p50, 3), "latency_p95_ms": round(p95, 3),
            "latency_cpu_p50_ms": round(cpu_p50, 3)}


def measure_decisions(router, prompts: list[str], batch_size: int) -> dict:
    """Routing from precomputed embeddings, a 1,000-μ sweep and a re-pricing, on 10,000 prompts."""
    encoding = router.encode(prompts, batch_size=batch_size)
    big = PromptEncoding(tile(encoding.embeddings, 10_000), tile(encoding.input_tokens, 10_000), [False] * 10_000)
    started = time.perf_counter()
    predictions = router.predict_encoded(big)
    decision = router.decide(predictions, mu=0.5)
    embedded_s = time.perf_counter() - started
    print(f"\nfrom embeddings      : {10_000 / embedded_s:9.0f} prompts/s  (10,000 prompts, predict_encoded + decide)")
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
    print(f"μ sweep              : 1,000 μ × 10,000 prompts in {sweep_s:.3f} s; spend per prompt "
          f"${float(spend[0]):.5f} at μ=0 → ${float(spend[-1]):.6f} at μ=1, monotone: {monotone}")
    new_prices = {name: {"input": 0.5 * p["input"], "output": 0.5 * p["output"]} for name, p in router.config.prices.items()}
    started = time.perf_counter()
    repriced = router.decide(predictions, mu=0.5, prices=new_prices)
    reprice_s = time.perf_counter() - started
    print(f"re-pricing           : 10,000 prompts decided with new prices in {reprice_s * 1000:.1f} ms "
          f"({sum(a != b for a, b in zip(decision.models, repriced.models))} choices changed)")
    return {
        "from_embeddings_prompts_per_s": round(10_000 / embedded_s, 0),
        "decide_10k_x_1000_s": round(sweep_s, 4),
        "reprice_10k_ms": round(reprice_s * 1000, 2),
    }


def tile(tensor: torch.Tensor, n: int) -> torch.Tensor:
    repeats = -(-n // tensor.shape[0])
    return tensor.repeat(repeats, *([1] * (tensor.ndim - 1)))[:n]


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--encoders", default=",".join(ENCODERS), help="comma-separated from static,transformer (default: both)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default: 2)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3, help="timed passes of each batched measurement (best kept)")
    parser.add_argument("--latency-samples", type=int, default=200)
    parser.add_argument("--short-chars", type=int, default=256, help="static: also route prompts cut to this many characters")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N prompts (quick runs)")
    parser.add_argument("--static-mlp", metavar="DIR", default=None,
                        help="also measure the static router with MLP heads in DIR (trained there when missing)")
    parser.add_argument("--dtype", choices=ENCODER_DTYPE_CHOICES, default="auto",
                        help="encoder dtype, as `carrot route --dtype` (default: auto; a static table stays float32)")
    args = parser.parse_args(argv)
    encoders = [e.strip() for e in args.encoders.split(",") if e.strip()]
    if not encoders or any(e not in ENCODERS for e in encoders):
        parser.error(f"--encoders takes names from {','.join(ENCODERS)}, got {args.encoders!r}")
    encoders.sort(key=ENCODERS.index)  # static first: its peak memory is then its own
    torch.set_num_threads(args.threads)

    prompts = load_prompts()[: args.limit]
    step = max(1, len(prompts) // args.latency_samples)
    sample = prompts[::step][: args.latency_samples]
    print(f"{len(prompts)} RouterBench prompts; torch threads {torch.get_num_threads()}; "
          f"TOKENIZERS_PARALLELISM={os.environ.get('TOKENIZERS_PARALLELISM')}; "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.1f}")
    results = {"n_prompts": len(prompts), "threads": torch.get_num_threads(), "batch_size": args.batch_size}
    routers = {}
    for kind in encoders:
        results[kind] = measure_encoder(kind, args, prompts, sample)
        routers[kind] = results[kind].pop("_router")
        if kind != encoders[-1]:
            del routers[kind]  # free it before the next encoder's runs
    if args.static_mlp:
        results["static_mlp"] = measure_static_mlp(args.static_mlp, args, prompts, sample)
    results.update(measure_decisions(routers[encoders[-1]], prompts, args.batch_size))
    if {"static", "transformer"} <= set(encoders):
        static, transformer = results["static"], results["transformer"]
        results["static_vs_transformer"] = {
            "route_throughput_ratio": round(static["route_prompts_per_s"] / transformer["route_prompts_per_s"], 1),
            "latency_p50_ratio": round(transformer["latency_p50_ms"] / static["latency_p50_ms"], 1),
            "model_safetensors_ratio": round(static["model_safetensors_mb"] / transformer["model_safetensors_mb"], 3),
        }
        ratio = results["static_vs_transformer"]
        print(f"\nstatic vs transformer: {ratio['route_throughput_ratio']}× the batched throughput, "
              f"{ratio['latency_p50_ratio']}× faster per prompt (p50), model.safetensors "
              f"{static['model_safetensors_mb']:.1f} MB vs {transformer['model_safetensors_mb']:.1f} MB; "
              f"peak memory {static['peak_rss_mb']:.0f} MB vs {transformer['peak_rss_mb']:.0f} MB")
    results["load_average"] = round(os.getloadavg()[0], 1)
    print(json.dumps(results))
    return results


if __name__ == "__main__":
    main()
    sys.exit(0)
