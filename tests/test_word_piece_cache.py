"""The static router's tokenizer fast path (CachedWordPieceTokenizer): exactly the backend's ids, on
the packaged RouterBench prompts and on text built to trip it up."""

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from carrot_hub.data import load_routing_table
from carrot_hub.default import DEFAULT_DATA_DIR
from carrot_hub.distillation import SHIPPED_STATIC_DIR
from carrot_hub.modeling_carrot import CachedWordPieceTokenizer

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
    # Unicode whose lowercasing, spacing or controls differ between Python and BERT:
    "İstanbul ΣΟΦΟΣ ΟΔΟΣ ﬁne ligature, Ǆ digraph",
    "no\u00a0break\u3000ideographic\u2003em space",
    "next\x85line, zero\u200bwidth, joiner\u200d, bom\ufeffmark, soft\u00adhyphen",
    "a combining mark after a space: \u0301abc and e\u0301 and \u1f600",
    "mixed ascii words then naïve ones then ascii again, UPPER Case",
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


def test_counting_gives_the_number_of_ids_without_building_them(static_tokenizer):
    fast = CachedWordPieceTokenizer.for_tokenizer(static_tokenizer)
    assert fast.count(TRICKY) == [len(ids) for ids in backend_ids(static_tokenizer, TRICKY)]
    assert fast.count(TRICKY) == [len(ids) for ids in backend_ids(static_tokenizer, TRICKY)]  # from a warm cache


def test_a_full_cache_is_cleared_and_ids_stay_exact(static_tokenizer):
    fast = CachedWordPieceTokenizer(static_tokenizer.backend_tokenizer, ["[UNK]", "[PAD]"], max_chunks=20)
    first, second = TRICKY[:2], TRICKY[2:4]
    assert fast(first) == backend_ids(static_tokenizer, first)
    assert fast(second) == backend_ids(static_tokenizer, second)
    # Over 20 chunks: the cache was emptied before the second batch and holds only its chunks.
    assert set(fast._chunk_ids) == {chunk for prompt in second for chunk in prompt.lower().split()}


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
    static_knn_router.prompt_encoder.word_piece_cache = None
    slow = static_knn_router.encode(prompts)
    assert torch.equal(fast.embeddings, slow.embeddings)
    assert fast.truncated == slow.truncated and fast.fallback_embedding == slow.fallback_embedding
    assert torch.equal(fast.input_tokens, slow.input_tokens)


def kept_end(ids, unknown, limit, from_end=True):
    known = [i for i in ids if i != unknown]
    return known[-limit:] if from_end else known[:limit]


@pytest.mark.parametrize("from_end", [True, False])
def test_a_window_at_the_kept_end_gives_that_ends_ids_on_every_packaged_prompt(static_tokenizer, from_end):
    prompts = load_routing_table(str(DEFAULT_DATA_DIR), split="test", progress=False).prompts
    fast, unknown = CachedWordPieceTokenizer.for_tokenizer(static_tokenizer), static_tokenizer.unk_token_id
    ids, counts = fast.window_ids(prompts, 128, from_end=from_end, skip_id=unknown)
    full = backend_ids(static_tokenizer, prompts)
    assert [kept_end(i, unknown, 128, from_end) for i in ids] == [kept_end(i, unknown, 128, from_end) for i in full]
    assert counts == [len(whole) for whole in full]  # the text outside the window is counted exactly
    assert sum(len(window) < len(whole) for window, whole in zip(ids, full)) > len(prompts) / 2  # most are cut


WINDOW_TRAPS = [
    "café naïve 中文 🥕 " * 100 + "then a plain ASCII question at the end?",  # non-ASCII only at the far end
    "plain words first " * 60 + " and then café, naïve and 中文 at the kept end",
    "averyveryverylongwordwithoutanyspaces" * 40,  # no place to cut: tokenized whole
    "supercalifragilisticexpialidocious " * 200,  # many characters per token: the window must grow
    "1,2;3.4 " * 300,  # few characters per token
    "\t\n\r".join(["tabbed", "and", "newlined"] * 200),
    "[UNK] " * 300 + "words after unknown tokens",  # the skipped id does not count toward the window
    "x" * 5000 + " tail",
]


@pytest.mark.parametrize("from_end", [True, False])
def test_windows_stay_exact_on_text_built_to_trip_them(static_tokenizer, from_end):
    fast, unknown = CachedWordPieceTokenizer.for_tokenizer(static_tokenizer), static_tokenizer.unk_token_id
    for limit in (1, 16, 128):
        ids, counts = fast.window_ids(WINDOW_TRAPS, limit, from_end=from_end, skip_id=unknown)
        full = backend_ids(static_tokenizer, WINDOW_TRAPS)
        assert [kept_end(i, unknown, limit, from_end) for i in ids] == [kept_end(i, unknown, limit, from_end) for i in full]
        assert counts == [len(whole) for whole in full]


def test_long_chunks_and_lines_are_never_kept(static_tokenizer):
    """A served prompt with a blob or a very long line must not grow the caches by its size."""
    fast = CachedWordPieceTokenizer.for_tokenizer(static_tokenizer)
    blob = "base64:" + "QUJD" * 500  # one chunk of 2,007 characters
    long_line = "word " * 400  # one line of 2,000 characters
    prompts = [f"decode this {blob} please", f"{long_line}\nand a short last line"]
    assert fast(prompts) == backend_ids(static_tokenizer, prompts)
    assert fast.count(prompts) == [len(ids) for ids in backend_ids(static_tokenizer, prompts)]
    assert max(map(len, fast._chunk_ids)) <= fast.max_chunk_chars
    assert fast._line_lengths and max(map(len, fast._line_lengths)) <= fast.max_line_chars
