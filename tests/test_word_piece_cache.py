"""The static router's tokenizer fast path (CachedWordPieceTokenizer): exactly the backend's ids, on
the packaged RouterBench prompts and on text built to trip it up."""

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from carrot_hub.data import load_routing_table
from carrot_hub.default import DEFAULT_DATA_DIR
from carrot_hub.distillation import SHIPPED_STATIC_DIR
from carrot_hub.modeling_carrot import _ASCII_WORD, CachedWordPieceTokenizer

TRICKY = [
    "Plain lowercase words.",
    "MiXeD CaSe, UPPER and lower; snake_case_name, dotted.name, a-b-c, x=1+2*3/4 (ok?) [yes] {no} <tag> `code` ~!@#$%^&|\\",
    "Digits 3.14159 and 1,000,000 and 0x1F and v2.0-beta!",
    "tabs\tand\nnewlines\r\nand    runs   of spaces",
    "control \x07 bell and \x0b vertical tab and \x7f delete",
    "accents: café naïve résumé, Straße, ÉCOLE",
    "中文 text with Chinese 字符 and emoji 🥕",
    "a literal [UNK] token and [PAD] too, also [unk] in lowercase",
    "averyveryverylongwordwithoutanyspaces" * 4,
    "",
    "   ",
    "supercalifragilisticexpialidocious antidisestablishmentarianism pneumonoultramicroscopic",
]


@pytest.fixture(scope="module")
def static_tokenizer():
    return PreTrainedTokenizerFast(tokenizer_file=str(SHIPPED_STATIC_DIR / "tokenizer.json"), unk_token="[UNK]")


def backend_ids(tokenizer, prompts):
    return [e.ids for e in tokenizer.backend_tokenizer.encode_batch_fast(prompts, add_special_tokens=False)]


def test_fast_path_gives_the_backends_ids_on_every_packaged_prompt(static_tokenizer):
    prompts = load_routing_table(str(DEFAULT_DATA_DIR), split="test", progress=False).prompts
    fast = CachedWordPieceTokenizer.for_tokenizer(static_tokenizer)
    assert fast is not None
    assert fast(prompts) == backend_ids(static_tokenizer, prompts)
    assert fast(prompts) == backend_ids(static_tokenizer, prompts)  # again, from a warm cache


def test_fast_path_gives_the_backends_ids_on_tricky_text(static_tokenizer):
    fast = CachedWordPieceTokenizer.for_tokenizer(static_tokenizer)
    assert fast(TRICKY) == backend_ids(static_tokenizer, TRICKY)
    for prompt in TRICKY:  # one at a time too, each with whatever the cache holds
        assert fast([prompt]) == backend_ids(static_tokenizer, [prompt])


def test_a_full_cache_is_cleared_and_ids_stay_exact(static_tokenizer):
    fast = CachedWordPieceTokenizer(static_tokenizer.backend_tokenizer, ["[UNK]", "[PAD]"], max_words=20)
    first, second = TRICKY[:2], TRICKY[2:4]
    assert fast(first) == backend_ids(static_tokenizer, first)
    assert fast(second) == backend_ids(static_tokenizer, second)
    # Over 20 words: the cache was emptied before the second batch and holds only its words.
    assert set(fast._word_ids) == {word for prompt in second for word in _ASCII_WORD.findall(prompt.lower())}


def test_the_transformer_encoders_tokenizer_also_qualifies(knn_router):
    assert CachedWordPieceTokenizer.for_tokenizer(knn_router.tokenizer) is not None


def test_other_tokenizers_are_left_to_their_backend():
    vocab = {"[UNK]": 0, "hello": 1, "world": 2}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    assert CachedWordPieceTokenizer.for_tokenizer(PreTrainedTokenizerFast(tokenizer_object=backend)) is None


def test_static_router_embeds_the_same_with_and_without_the_fast_path(static_knn_router, monkeypatch):
    prompts = load_routing_table(str(DEFAULT_DATA_DIR), split="test", progress=False).prompts[:200]
    prompts += [prompt for prompt in TRICKY if prompt.strip()]
    fast = static_knn_router.encode(prompts)
    monkeypatch.setattr(CachedWordPieceTokenizer, "for_tokenizer", classmethod(lambda cls, tokenizer: None))
    static_knn_router._word_piece_cache = None
    slow = static_knn_router.encode(prompts)
    assert torch.equal(fast.embeddings, slow.embeddings)
    assert torch.equal(fast.input_tokens, slow.input_tokens)
    assert fast.truncated == slow.truncated and fast.fallback_embedding == slow.fallback_embedding
