"""
Figures for the publishing issue, on the real RouterBench zero-shot data shipped with carrot_hub:

1. what `router.push_to_hub` sends for the demo (default) router (Hub calls captured, nothing leaves
   the machine): files, sizes and the card (`--publish-only` stops there);
2. how routing decisions on the test split change when GPT-4's prices are halved with `set_prices`
   (weights byte-identical);
3. how they change when a held-out model is added to a 10-model kNN router from 300 prompts.

Usage: HF_HUB_OFFLINE=1 python scripts/measure_publishing.py [--out /tmp/carrot_publishing] [--publish-only]
(CARROT_EVAL_JSON / CARROT_EVAL_PLOT: an evaluation JSON and PNG to publish with the router.)
"""

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path
from unittest import mock

import numpy as np
import torch
from safetensors.torch import load_file, save_file

import carrot_hub
from carrot_hub.building import fit_knn
from training.candidates import add_candidate
from carrot_hub.data import load_routing_table
from carrot_hub.default import DEFAULT_DATA_DIR
from carrot_hub.modeling_carrot import CarrotRouter, PromptEncoding
from carrot_hub.router_publishing import set_prices

MUS = (0.0, 0.1, 0.3, 0.5)


def realised(table, prices, chosen: np.ndarray) -> tuple[float, float]:
    """Mean true score (missing = 0) and mean true dollars of the chosen models."""
    rows = np.arange(len(table))
    scores = np.nan_to_num(table.scores[rows, chosen], nan=0.0)
    cost = table.cost(prices)[rows, chosen]
    return float(scores.mean()), float(np.nanmean(cost))


def decisions(router, encoding, mu, prices=None, allowed=None) -> np.ndarray:
    predictions = router.predict_encoded(encoding)
    return router.decide(predictions, mu=mu, prices=prices, allowed=allowed).model_indices.numpy()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--out", default="/tmp/carrot_publishing")
    parser.add_argument("--held-out", action="append", help="model(s) to hold out and add back (default: two)")
    parser.add_argument("--n-new", type=int, default=300)
    parser.add_argument("--publish-only", action="store_true", help="only figure 1: what push_to_hub sends")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {}

    # -- the demo router, built once into out/default-router
    router = carrot_hub.default_router(cache_dir=out / "default-router", dtype="float32")  # published as trained
    folder = out / "default-router"

    # -- 1. what router.push_to_hub sends
    sent = {}

    def create_commit(api, repo_id, operations, **kwargs):
        for op in operations:
            source = op.path_or_fileobj
            sent[op.path_in_repo] = Path(source).read_bytes() if isinstance(source, str) else bytes(source)
        return {"commit_url": "captured"}

    eval_json = os.environ.get("CARROT_EVAL_JSON")
    plot = os.environ.get("CARROT_EVAL_PLOT")
    with mock.patch("huggingface_hub.HfApi.create_repo"), mock.patch(
        "huggingface_hub.HfApi.create_commit", create_commit
    ), mock.patch("huggingface_hub.get_token", lambda: "hf_captured"):
        result = router.push_to_hub(
            "carrot-llm-routing/carrot-knn-routerbench-0shot", eval_results=eval_json, plot=plot,
            encoder_id="sentence-transformers/all-MiniLM-L6-v2", datasets=["withmartian/routerbench"],
        )
    report["publish_files"] = dict(result.files)
    report["publish_total_bytes"] = result.total_bytes
    (out / "demo_card.md").write_text(result.card, encoding="utf-8")
    for name in sent:  # what a Hub user would download
        (out / "sent" / name).parent.mkdir(parents=True, exist_ok=True)
        (out / "sent" / name).write_bytes(sent[name])
    if args.publish_only:
        print(json.dumps(report, indent=2))
        return 0

    train = load_routing_table(str(DEFAULT_DATA_DIR), split="train")
    test = load_routing_table(str(DEFAULT_DATA_DIR), split="test")
    models = router.config.candidate_models
    test = test.select_models(models)
    train = train.select_models(models)
    # The kNN memory holds the train prompts' embeddings, in table order.
    train_embeddings = router.predictor.embeddings.clone()
    cache = out / "test_encoding.safetensors"
    if cache.is_file():
        saved = load_file(cache)
        test_encoding = PromptEncoding(saved["embeddings"], saved["input_tokens"], [False] * len(test))
    else:
        test_encoding = router.encode(test.prompts, batch_size=32, progress=True)
        save_file({"embeddings": test_encoding.embeddings, "input_tokens": test_encoding.input_tokens}, cache)

    # -- 2. GPT-4 at half price through set_prices
    gpt4 = next(m for m in models if "gpt-4" in m)
    price = router.config.prices[gpt4]
    halved = {gpt4: {"input": price["input"] / 2, "output": price["output"] / 2}}
    repriced_folder = out / "default-router-gpt4-half"
    if repriced_folder.exists():
        import shutil

        shutil.rmtree(repriced_folder)
    set_prices(folder, halved, output_folder=repriced_folder, recorded_on="2025-01-01")
    digest = lambda p: hashlib.sha256(p.read_bytes()).hexdigest()  # noqa: E731
    assert digest(folder / "model.safetensors") == digest(repriced_folder / "model.safetensors")
    repriced = CarrotRouter.from_pretrained(repriced_folder)
    old_prices, new_prices = router.config.prices, repriced.config.prices
    rows = {}
    for mu in MUS:
        before = decisions(router, test_encoding, mu)
        after = decisions(repriced, test_encoding, mu)
        q0, c0 = realised(test, old_prices, before)
        q1, c1 = realised(test, new_prices, after)
        _, c0_new = realised(test, new_prices, before)
        rows[mu] = {
            "changed": float((before != after).mean()),
            "gpt4_share_before": float((before == models.index(gpt4)).mean()),
            "gpt4_share_after": float((after == models.index(gpt4)).mean()),
            "quality_before": q0, "quality_after": q1,
            "cost_before_old_prices": c0, "cost_after_new_prices": c1,
            "cost_old_decisions_new_prices": c0_new,
        }
    report["gpt4_half_price"] = {"model": gpt4, "weights_identical": True, "by_mu": rows}

    # -- 3. hold a model out, add it back from n_new prompts
    held_models = args.held_out or [gpt4, "zero-one-ai/Yi-34B-Chat"]
    rng = np.random.default_rng(0)
    report["add_model"] = {}
    for held in held_models:
        rest = [m for m in models if m != held]
        small = carrot_hub.new_router(
            rest, {m: router.config.prices[m] for m in rest}, knn_k=router.config.knn_k,
            cost_scale=router.config.cost_scale,
        )
        fit_knn(small, train_embeddings, train.select_models(rest))
        observed = np.flatnonzero(~np.isnan(train.scores[:, models.index(held)]))
        picked = np.sort(rng.choice(observed, size=args.n_new, replace=False))
        new_table = train.subset(picked).select_models([held])
        bigger = add_candidate(
            small, held, new_table, router.config.prices[held]["input"], router.config.prices[held]["output"],
            embeddings=train_embeddings[torch.as_tensor(picked)],
        )
        p_small, p_big = small.predict_encoded(test_encoding), bigger.predict_encoded(test_encoding)
        unchanged = bool(torch.equal(p_small.quality, p_big.quality[:, :-1])) and bool(
            torch.equal(p_small.output_tokens, p_big.output_tokens[:, :-1])
        )
        column_of = {m: models.index(m) for m in models}
        by_mu = {}
        for mu in MUS:
            d_small = np.array([column_of[rest[i]] for i in decisions(small, test_encoding, mu)])
            d_big = np.array([column_of[bigger.config.candidate_models[i]] for i in decisions(bigger, test_encoding, mu)])
            d_full = decisions(router, test_encoding, mu)
            entry = {"changed": float((d_small != d_big).mean()), "new_model_share": float((d_big == column_of[held]).mean()),
                     "full_router_new_model_share": float((d_full == column_of[held]).mean())}
            for label, chosen in (("without", d_small), ("added_from_%d" % args.n_new, d_big), ("trained_on_all", d_full)):
                q, c = realised(test, old_prices, chosen)
                entry[label] = {"quality": q, "cost": c}
            by_mu[mu] = entry
        report["add_model"][held] = {"old_predictions_identical": unchanged, "memory": bigger.config.knn_memory_size,
                                     "old_quality_max_abs_diff": float((p_small.quality - p_big.quality[:, :-1]).abs().max()),
                                     "old_output_tokens_max_rel_diff": float(
                                         ((p_small.output_tokens - p_big.output_tokens[:, :-1]).abs()
                                          / p_small.output_tokens.clamp(min=1)).max()),
                                     "by_mu": by_mu}
    (out / "figures.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
