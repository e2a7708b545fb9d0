"""The static encoder kind: a token table distilled from all-MiniLM-L6-v2 (shipped with the package),
mean pooled and L2-normalised with torch alone; its save/load paths and its bad inputs."""

import json
import shutil

import pytest
import torch
from transformers import AutoModel

from carrot_hub import CarrotConfig, CarrotRouter
from carrot_hub.building import default_encoder_path, new_router
from carrot_hub.distillation import (
    DEFAULT_STATIC_DIMENSIONS,
    SHIPPED_STATIC_DIR,
    distill_static_encoder,
    distillation_key,
    load_static_table,
)

from .conftest import TINY_MODELS, TINY_PRICES, TINY_PROMPTS
from .hidden_package import run_without_carrot_hub

UNREADABLE = "☃ 🥕 ☂"  # no token of the vocabulary: all [UNK]


def manual_embedding(router, prompt: str) -> torch.Tensor:
    """The static embedding computed by hand: tokens without [UNK], the last max_prompt_tokens, mean, L2."""
    tokenizer = router.tokenizer
    ids = [i for i in tokenizer(prompt, add_special_tokens=False)["input_ids"] if i != tokenizer.unk_token_id]
    ids = ids[-router.config.max_prompt_tokens :]
    rows = router.encoder.token_embeddings.weight[torch.tensor(ids)]
    return torch.nn.functional.normalize(rows.mean(0), dim=0)


def test_static_router_has_the_shipped_table_and_its_tokenizer(static_knn_router):
    config = static_knn_router.config
    assert config.encoder_kind == "static" and config.encoder_config == {}
    assert (config.static_vocab_size, config.static_embedding_size) == (29525, 128)
    assert len(static_knn_router.tokenizer) == config.static_vocab_size
    assert static_knn_router.tokenizer.num_special_tokens_to_add() == 0
    assert config.static_distillation["base_encoder"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert static_knn_router.embedding_size == 128


def test_shipped_static_table_matches_the_installed_encoder():
    from transformers import AutoModel as HFAutoModel
    from transformers import AutoTokenizer

    source = default_encoder_path()
    key = distillation_key(HFAutoModel.from_pretrained(source), AutoTokenizer.from_pretrained(source), DEFAULT_STATIC_DIMENSIONS, None)
    assert load_static_table(SHIPPED_STATIC_DIR, key) is not None, "stale: run scripts/build_static_default.py"


@pytest.mark.parametrize("word, related", [("translate", "translation"), ("math", "mathematics"),
                                           ("python", "programming"), ("poem", "poetry"), ("doctor", "medical")])
def test_shipped_table_rows_belong_to_their_tokens(word, related):
    """Each row is the encoder's embedding of its own token: a related word is among its 50 nearest
    rows of 29,525. (A table read back from a model2vec folder once shipped with its rows on other
    tokens: the nearest rows of "math" were "##น", "dangers", "simplified".)"""
    table = load_static_table(SHIPPED_STATIC_DIR)
    rows = torch.nn.functional.normalize(table.token_embeddings, dim=1)
    vocab = table.tokenizer.get_vocab()
    similarity = rows @ rows[vocab[word]]
    similarity[vocab[word]] = -2.0
    assert vocab[related] in similarity.topk(50).indices.tolist()


def test_embedding_is_the_normalised_mean_of_the_token_rows(static_knn_router):
    encoding = static_knn_router.encode(TINY_PROMPTS)
    for row, prompt in enumerate(TINY_PROMPTS):
        torch.testing.assert_close(encoding.embeddings[row], manual_embedding(static_knn_router, prompt))
    assert encoding.fallback_embedding == [False] * len(TINY_PROMPTS)
    assert encoding.truncated == [False] * len(TINY_PROMPTS)


def test_padded_forward_gives_the_same_embeddings_as_the_bag_path(static_knn_router):
    from carrot_hub.modeling_carrot import pad_batch

    token_ids, _, _ = static_knn_router._tokenize(TINY_PROMPTS)
    input_ids, attention_mask = pad_batch(token_ids, pad_id=0)
    with torch.no_grad():
        padded = static_knn_router.embed(input_ids, attention_mask)
    torch.testing.assert_close(padded, static_knn_router.encode(TINY_PROMPTS).embeddings)


def test_long_prompt_keeps_its_end_and_counts_every_token(static_knn_router):
    question = "Which planet is known as the red planet?"
    prompt = "Some shared few-shot context about chemistry and physics. " * 60 + question
    encoding = static_knn_router.encode([prompt])
    assert encoding.truncated == [True]
    full = len(static_knn_router.tokenizer(prompt, add_special_tokens=False)["input_ids"])
    assert encoding.input_tokens.tolist() == [float(full)] and full > static_knn_router.config.max_prompt_tokens
    torch.testing.assert_close(encoding.embeddings[0], manual_embedding(static_knn_router, prompt))
    other_start = "Completely different opening words about cooking pasta. " + prompt
    torch.testing.assert_close(static_knn_router.encode([other_start]).embeddings, encoding.embeddings)


def test_prompt_without_known_tokens_routes_with_the_fallback_and_says_so(static_knn_router):
    decision = static_knn_router.route([TINY_PROMPTS[0], UNREADABLE], mu=0.5)
    assert decision.fallback_embedding == [False, True]
    assert [r["fallback_embedding"] for r in decision.to_records()] == [False, True]
    assert decision.models[1] in TINY_MODELS and torch.isfinite(decision.quality[1]).all()
    encoding = static_knn_router.encode([UNREADABLE])
    torch.testing.assert_close(encoding.embeddings[0], static_knn_router.encoder.fallback)
    assert encoding.input_tokens.tolist() == [3.0]  # the [UNK]s still count as input tokens for the cost
    assert float(static_knn_router.encoder.fallback.norm()) == pytest.approx(1.0)


def test_transformer_decisions_never_flag_the_fallback(knn_router):
    assert knn_router.route([TINY_PROMPTS[0], UNREADABLE]).fallback_embedding == [False, False]


def test_static_round_trip_gives_identical_decisions(static_knn_router, saved_static_router):
    assert {"model.safetensors", "tokenizer.json", "config.json"} <= {p.name for p in saved_static_router.iterdir()}
    loaded = AutoModel.from_pretrained(saved_static_router)
    assert isinstance(loaded, CarrotRouter) and loaded.config.encoder_kind == "static"
    for mu in (0.0, 0.5, 1.0):
        before, after = static_knn_router.route(TINY_PROMPTS, mu=mu), loaded.route(TINY_PROMPTS, mu=mu)
        assert torch.equal(before.quality, after.quality) and before.models == after.models


def test_static_router_loads_as_remote_code_without_carrot_hub_or_model2vec(static_knn_router, saved_static_router, tmp_path):
    result = run_without_carrot_hub(
        f"""
        import json, sys
        sys.modules["model2vec"] = None  # routing must not need it
        from transformers import AutoModel
        router = AutoModel.from_pretrained({str(saved_static_router)!r}, trust_remote_code=True)
        decision = router.route({[*TINY_PROMPTS, UNREADABLE]!r}, mu=0.5)
        print(json.dumps({{"module": type(router).__module__, "models": decision.models,
                          "quality": decision.quality.tolist(), "fallback": decision.fallback_embedding}}))
        """,
        cwd=tmp_path,
    )
    assert not result["module"].startswith("carrot_hub")
    expected = static_knn_router.route([*TINY_PROMPTS, UNREADABLE], mu=0.5)
    assert result["models"] == expected.models and result["fallback"] == expected.fallback_embedding
    assert torch.equal(torch.tensor(result["quality"]), expected.quality)


@pytest.fixture
def static_copy(saved_static_router, tmp_path):
    folder = tmp_path / "static-copy"
    shutil.copytree(saved_static_router, folder)
    return folder


def test_tokenizer_of_another_size_than_the_table_is_refused(static_copy):
    for name in ("tokenizer.json", "tokenizer_config.json"):  # the encoder's own tokenizer: 30,522 tokens
        shutil.copy(f"{default_encoder_path()}/{name}", static_copy / name)
    with pytest.raises(ValueError, match="token table has 29525 rows but the tokenizer .* has 30522 tokens"):
        AutoModel.from_pretrained(static_copy)


def test_config_table_shape_that_disagrees_with_the_weights_is_refused(static_copy):
    config = json.loads((static_copy / "config.json").read_text())
    config["static_vocab_size"] = 1000
    (static_copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="static token table has another shape"):
        AutoModel.from_pretrained(static_copy)


def test_router_saved_before_encoder_kinds_loads_as_a_transformer(knn_router, saved_knn_router, tmp_path):
    folder = tmp_path / "old"
    shutil.copytree(saved_knn_router, folder)
    config = json.loads((folder / "config.json").read_text())
    for key in ("encoder_kind", "static_vocab_size", "static_embedding_size", "static_distillation"):
        config.pop(key, None)
    (folder / "config.json").write_text(json.dumps(config))
    loaded = AutoModel.from_pretrained(folder)
    assert loaded.config.encoder_kind == "transformer"
    assert torch.equal(loaded.route(TINY_PROMPTS).quality, knn_router.route(TINY_PROMPTS).quality)


@pytest.mark.parametrize("make", [
    lambda: CarrotConfig(candidate_models=["a", "b"], encoder_kind="statik"),
    lambda: new_router(TINY_MODELS, TINY_PRICES, encoder_kind="word2vec"),
])
def test_unknown_encoder_kind_is_refused(make):
    with pytest.raises(ValueError, match="encoder_kind must be one of"):
        make()


def test_static_config_without_a_table_shape_is_refused():
    with pytest.raises(ValueError, match="static_vocab_size and static_embedding_size"):
        CarrotConfig(candidate_models=["a", "b"], encoder_kind="static")


def test_distilling_from_a_missing_encoder_folder_says_so(tmp_path):
    with pytest.raises(ValueError, match="sentence encoder folder .*does not exist"):
        distill_static_encoder(str(tmp_path / "no-such-encoder"))
    with pytest.raises(ValueError, match="does not exist"):
        new_router(TINY_MODELS, TINY_PRICES, encoder_kind="static", encoder="./encoders/missing")


def test_static_options_on_a_transformer_router_are_refused():
    with pytest.raises(ValueError, match="encoder_kind='static' only"):
        new_router(TINY_MODELS, TINY_PRICES, static_dimensions=64)


@pytest.mark.slow
def test_distillation_with_model2vec_from_the_encoder_folder(tmp_path):
    """Distil all-MiniLM-L6-v2 for real (minutes): the 32 PCA components are the shipped table's first 32."""
    table = distill_static_encoder(default_encoder_path(), dimensions=32, cache_dir=tmp_path, progress=False)
    assert table.token_embeddings.shape == (29525, 32)
    assert len(table.tokenizer) == 29525
    shipped = load_static_table(SHIPPED_STATIC_DIR)
    ours, theirs = table.token_embeddings, shipped.token_embeddings[:, :32]
    # PCA components are defined up to their sign: compare column by column.
    signs = torch.sign((ours * theirs).sum(0))
    torch.testing.assert_close(ours * signs, theirs, atol=2e-2, rtol=2e-2)
    again = distill_static_encoder(default_encoder_path(), dimensions=32, cache_dir=tmp_path, progress=False)
    torch.testing.assert_close(again.token_embeddings, table.token_embeddings.half().float())  # from the cache


def test_many_prompts_are_predicted_chunk_by_chunk_as_in_one_pass(static_knn_router):
    from carrot_hub.encoder_carrot import TOKENIZE_CHUNK_PROMPTS

    prompts = [f"{TINY_PROMPTS[i % len(TINY_PROMPTS)]} (variant {i})" for i in range(TOKENIZE_CHUNK_PROMPTS * 2 + 7)]
    chunked = static_knn_router.predict(prompts)  # tokenizing overlaps predicting, three chunks
    whole = static_knn_router.predict_encoded(static_knn_router.encode(prompts), batch_size=len(prompts))
    assert len(chunked) == len(prompts)
    for name in ("quality", "output_tokens", "input_tokens", "support", "quality_low", "quality_high"):
        torch.testing.assert_close(getattr(chunked, name), getattr(whole, name), msg=name)
    assert chunked.truncated == whole.truncated and chunked.fallback_embedding == whole.fallback_embedding


def test_an_mlp_router_with_its_own_support_memory_predicts_chunk_by_chunk_as_in_one_pass(tiny_table, monkeypatch):
    from carrot_hub import encoder_carrot
    from carrot_hub.building import fit_support_and_prior

    router = new_router(TINY_MODELS, TINY_PRICES, predictor_kind="mlp", encoder_kind="static", head_hidden_size=8)
    fit_support_and_prior(router, tiny_table, embeddings=router.encode(tiny_table.prompts).embeddings)
    assert router.reliability.support_embeddings is not None  # support is searched apart from the heads
    monkeypatch.setattr(encoder_carrot, "TOKENIZE_CHUNK_PROMPTS", 3)  # several chunks: the pipelined path
    prompts = [f"{TINY_PROMPTS[i % len(TINY_PROMPTS)]} (variant {i})" for i in range(11)]
    chunked = router.predict(prompts)
    whole = router.predict_encoded(router.encode(prompts), batch_size=len(prompts))
    for name in ("quality", "output_tokens", "input_tokens", "support", "quality_low", "quality_high"):
        torch.testing.assert_close(getattr(chunked, name), getattr(whole, name), msg=name)
    assert not torch.isnan(chunked.support).any()


def test_concurrent_static_batches_restore_the_switch_interval(static_knn_router, monkeypatch):
    import sys
    import threading

    from carrot_hub import encoder_carrot

    monkeypatch.setattr(encoder_carrot, "TOKENIZE_CHUNK_PROMPTS", 2)  # several chunks: the pipelined path
    before = sys.getswitchinterval()
    prompts = [f"{prompt} (variant {i})" for i in range(4) for prompt in TINY_PROMPTS]
    expected = static_knn_router.route(prompts).models
    results = []
    threads = [threading.Thread(target=lambda: results.append(static_knn_router.route(prompts).models)) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert results == [expected] * 4
    assert sys.getswitchinterval() == before


def test_the_encoder_kind_is_one_object_chosen_once(knn_router, static_knn_router):
    from carrot_hub.encoder_carrot import StaticPromptEncoder, TransformerPromptEncoder

    assert isinstance(static_knn_router.prompt_encoder, StaticPromptEncoder)
    assert isinstance(knn_router.prompt_encoder, TransformerPromptEncoder)
    # The implementation is plain Python: the encoder's weights stay the router's `encoder.*` module.
    assert not any(name.startswith("prompt_encoder") for name in static_knn_router.state_dict())
    assert static_knn_router.embedding_size == static_knn_router.encoder.embedding_size
    assert knn_router.embedding_size == knn_router.encoder.config.hidden_size
