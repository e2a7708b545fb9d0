"""What the router accepts as a prompt and how much of one it reads (issue 23, items 1, 2 and 14):
one definition of an unroutable prompt, bounded tokenizer work per prompt, and empty batches."""

import random
import unicodedata

import pytest

import carrot_hub.encoder_carrot as encoding
import carrot_hub.modeling_carrot as modeling
from carrot_hub.modeling_carrot import CachedWordPieceTokenizer, check_prompts, prompt_has_content, prompt_problem
from carrot_hub.tokenization_carrot import examined_text

from .conftest import TINY_PROMPTS


# ------------------------------------------------------------- 1: what an unroutable prompt is


def test_every_character_skipped_fast_has_no_content():
    # The fast path may only skip characters the category rule calls empty, or it would refuse text.
    skipped = [chr(c) for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF and modeling._NO_CONTENT_RUN.fullmatch(chr(c))]
    assert len(skipped) > 200
    wrong = [f"U+{ord(c):04X}" for c in skipped if unicodedata.category(c) not in modeling._NO_CONTENT_CATEGORIES]
    assert not wrong


def test_prompt_has_content_is_the_category_rule():
    def by_category(prompt):
        return any(unicodedata.category(c) not in modeling._NO_CONTENT_CATEGORIES for c in prompt)

    pool = ["\u200b", "\x00", " ", "\t", "\u2060", "\ufeff", "\u180e", "\U000e0041", "\u0600", "\u110bd", "\u2028",
            "a", "é", "字", "\u0301", "\U0001f600", "\ue000"]
    rng = random.Random(0)
    for _ in range(3000):
        prompt = "".join(rng.choice(pool) for _ in range(rng.randint(0, 6)))
        assert prompt_has_content(prompt) == by_category(prompt), ascii(prompt)


@pytest.mark.parametrize("prompt, needle", [
    ("\u200b" * 1000, "is empty"), ("", "is empty"), ("\x01\x02", "is empty"),
    ("hello \ud800 world", "lone surrogate (U+D800 at character 6)"), ("\udfff", "lone surrogate"),
])
def test_prompt_problem_names_what_is_wrong(knn_router, prompt, needle):
    assert needle in prompt_problem(prompt)
    with pytest.raises(ValueError, match=r"prompt 1 (is empty|holds a lone surrogate)"):
        knn_router.route(["fine", prompt])
    assert prompt_problem("fine \U0001f600") is None


def test_a_single_string_gets_the_same_check():
    with pytest.raises(ValueError, match="prompt 0 is empty"):
        check_prompts("\u200b")
    assert check_prompts("hi") == ["hi"]


# ------------------------------------------------------ 2: bounded tokenizer work per prompt


def distinct_words(n: int, seed: int = 0) -> str:
    rng = random.Random(seed)
    return " ".join("".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(3, 9))) for _ in range(n))


def test_examined_text_cuts_at_a_word_boundary_at_the_kept_end():
    prompt = "alpha beta gamma delta"
    assert examined_text(prompt, 100) == prompt
    assert examined_text(prompt, 8) == "delta"  # the cut falls inside "gamma": the next word starts it
    assert examined_text(prompt, 8, from_end=False) == "alpha"
    assert examined_text("x" * 1000, 100) == "x" * 100  # no space near: cut where the budget ends


def _spy(monkeypatch, router):
    """Record the longest text each tokenizer was given."""
    seen = []
    tokenizer = router.tokenizer

    class Spy:
        def __getattr__(self, name):
            return getattr(tokenizer, name)

        def __call__(self, texts, **options):
            seen.extend(len(t) for t in texts)
            return tokenizer(texts, **options)

    original = CachedWordPieceTokenizer.window_ids

    def window_ids(self, prompts, *args, **options):
        seen.extend(len(p) for p in prompts)
        return original(self, prompts, *args, **options)

    monkeypatch.setattr(type(router), "tokenizer", property(lambda self: Spy() if not self.is_static else tokenizer))
    monkeypatch.setattr(CachedWordPieceTokenizer, "window_ids", window_ids)
    return seen


@pytest.mark.parametrize("which", ["knn_router", "static_knn_router"])
def test_a_huge_prompt_is_tokenized_only_at_its_kept_end(request, monkeypatch, which):
    router = request.getfixturevalue(which)
    question = " Which planet is known as the red planet?"
    huge = distinct_words(600_000) + question  # about 4 MB of words never seen before
    reference = router.route([huge[-20_000:]], mu=0.5)  # the same kept tokens, read whole
    seen = _spy(monkeypatch, router)
    decision = router.route([huge, TINY_PROMPTS[0]], mu=0.5)
    cap = encoding.MAX_CHARS_EXAMINED_PER_TOKEN * router.config.max_prompt_tokens
    assert max(seen) <= cap
    assert decision.truncated[0] and decision.models[0] == reference.models[0]
    assert decision.quality[0].tolist() == pytest.approx(reference.quality[0].tolist(), abs=1e-5)
    exact_per_char = reference.input_tokens[0].item() / 20_000
    assert decision.input_tokens[0].item() == pytest.approx(exact_per_char * len(huge), rel=0.1)


@pytest.mark.parametrize("which", ["knn_router", "static_knn_router"])
def test_prompts_under_the_cap_route_exactly_as_before(request, monkeypatch, which):
    router = request.getfixturevalue(which)
    prompts = [*TINY_PROMPTS, distinct_words(3000, seed=1) + " What is 2 + 2?"]
    assert all(len(p) < encoding.MAX_CHARS_EXAMINED_PER_TOKEN * router.config.max_prompt_tokens for p in prompts)
    capped = router.route(prompts, mu=0.5)
    monkeypatch.setattr(encoding, "MAX_CHARS_EXAMINED_PER_TOKEN", 10**9)  # no cap at all
    uncapped = router.route(prompts, mu=0.5)
    assert capped.models == uncapped.models
    assert capped.input_tokens.tolist() == uncapped.input_tokens.tolist()
    assert capped.truncated == uncapped.truncated
    assert capped.quality.tolist() == uncapped.quality.tolist()


# ------------------------------------------------------------------ 14: nothing to route


@pytest.mark.parametrize("which", ["knn_router", "static_knn_router"])
def test_an_empty_batch_gives_an_empty_decision(request, which):
    router = request.getfixturevalue(which)
    predictions = router.predict([])
    assert len(predictions) == 0 and predictions.quality.shape == (0, router.config.num_candidates)
    decision = router.route([])
    assert len(decision) == 0 and decision.models == [] and decision.to_records() == []
