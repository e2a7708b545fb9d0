"""The prompt encoder: prompts → token ids → L2-normalised embeddings (and, through the router's
predictor, predictions), with one implementation per `config.encoder_kind`: a transformer
(BERT-family, mean pooled) and the static token table distilled from one.

This file travels to the Hub next to `modeling_carrot.py` as remote code: it imports only torch,
transformers, the standard library and its flat siblings (relative imports).
"""

import array
import itertools
import math
import sys
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import torch
from torch import nn
from torch.nn import functional as F
from transformers import AutoConfig, AutoModel
from transformers.utils.logging import tqdm

from .configuration_carrot import CarrotConfig
from .decision_carrot import PromptEncoding, PromptPredictions
from .tokenization_carrot import _TOKEN_ID_DTYPE, TOKEN_ID_TYPE, CachedWordPieceTokenizer, examined_text

# Prompts are tokenized this many at a time: the tokenizer's output for a whole list of long
# prompts takes gigabytes (50,000 prompts of 400 words: ~4 GB), one chunk only a few hundred MB.
TOKENIZE_CHUNK_PROMPTS = 1024
PIPELINE_SWITCH_INTERVAL_S = 0.0005  # GIL hand-over while a static router tokenizes and predicts at once

# A prompt is counted as at least one input token per this many UTF-8 bytes. The encoder's
# tokenizer collapses some text (a word longer than 100 characters becomes one [UNK]; zero-width
# and control characters are dropped) that the candidate LLMs still charge for, so its count alone
# could be gamed. Ordinary text never reaches the bound: RouterBench prompts average 4.3 bytes per
# WordPiece token and the densest has 6.6, so their counts stay the tokenizer's exact ones.
MAX_BYTES_PER_TOKEN = 8
# Of a long prompt only this many characters per kept token (`max_prompt_tokens`) are tokenized, at
# the kept end; the rest is counted by proportion. It bounds the tokenizer's work per prompt (a
# 4 MB prompt of distinct words held the routing thread for seconds) and leaves every prompt under
# 128 × 512 = 65,536 characters exactly as before (RouterBench's longest has 4,284).
MAX_CHARS_EXAMINED_PER_TOKEN = 512


def mean_pool(last_hidden_state: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean of the token states over real tokens: `(batch, seq, hidden)` → `(batch, hidden)`."""
    mask = attention_mask.unsqueeze(-1).to(last_hidden_state.dtype)
    return (last_hidden_state * mask).sum(1) / mask.sum(1).clamp(min=1e-9)

class CarrotStaticEncoder(nn.Module):
    r"""
    A static sentence encoder: one vector per token of the vocabulary, distilled from a sentence
    encoder (model2vec: each token's embedding by the encoder, reduced by PCA and weighted by a
    Zipf estimate of its frequency), averaged over a prompt's tokens and L2-normalised. No attention
    and no positions: a prompt costs one table lookup per token, so the tokenizer is the main cost.

    Buffers and weights (all in `model.safetensors`):
        token_embeddings.weight `(vocab_size, embedding_size)`: the distilled rows, SIF weight
            folded in (model2vec multiplies them at encoding time: the mean is the same).
        fallback `(embedding_size,)`: the embedding given to a prompt with no token of the
            vocabulary (the L2-normalised mean of all rows: the "average token").
    """

    def __init__(self, vocab_size: int, embedding_size: int):
        super().__init__()
        self.token_embeddings = nn.EmbeddingBag(vocab_size, embedding_size, mode="mean")
        self.register_buffer("fallback", torch.zeros(embedding_size))

    @property
    def vocab_size(self) -> int:
        return self.token_embeddings.num_embeddings

    @property
    def embedding_size(self) -> int:
        return self.token_embeddings.embedding_dim

    def embed_bags(
        self, token_ids: torch.Tensor, offsets: torch.Tensor, empty: torch.Tensor | None = None
    ) -> torch.Tensor:
        """
        Prompts as one flat `token_ids (n_tokens,)` tensor and the `offsets (batch,)` where each
        prompt starts → `(batch, embedding_size)` float32 L2-normalised embeddings; a prompt with no
        tokens gets `fallback`. `empty (batch,)` bool, when the caller knows it, saves finding them.
        """
        # The functional form: the module's call costs more than the lookup for a single prompt.
        pooled = F.embedding_bag(token_ids, self.token_embeddings.weight, offsets, mode="mean").float()
        if empty is None:
            empty = torch.diff(offsets, append=offsets.new_tensor([token_ids.numel()])) == 0
        return self._normalise(pooled, empty)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Padded `(batch, seq)` token ids and mask → `(batch, embedding_size)`, as [`embed_bags`]."""
        rows = F.embedding(input_ids, self.token_embeddings.weight).float()
        pooled = mean_pool(rows, attention_mask)
        return self._normalise(pooled, attention_mask.sum(1) == 0)

    def _normalise(self, pooled: torch.Tensor, empty: torch.Tensor | bool) -> torch.Tensor:
        embeddings = F.normalize(pooled, p=2, dim=-1)
        if isinstance(empty, torch.Tensor) and bool(empty.any()):
            embeddings[empty] = self.fallback.float()
        return embeddings

def _transformer_encoder(config: CarrotConfig) -> nn.Module:
    """The BERT-family encoder `config.encoder_config` describes, without its pooler (weights unset)."""
    encoder_config = dict(config.encoder_config or {"model_type": "bert"})
    model_type = encoder_config.pop("model_type", "bert")
    # The encoder's own saved dtype is dropped so that it follows `from_pretrained(dtype=...)`.
    for key in ("architectures", "transformers_version", "auto_map", "_name_or_path", "dtype", "torch_dtype"):
        encoder_config.pop(key, None)
    return AutoModel.from_config(AutoConfig.for_model(model_type, **encoder_config), add_pooling_layer=False)


def examined_texts(router, prompts: list[str]) -> list[str]:
    """Each prompt, or of a long one the `MAX_CHARS_EXAMINED_PER_TOKEN × max_prompt_tokens` characters at its kept end."""
    max_chars = MAX_CHARS_EXAMINED_PER_TOKEN * router.config.max_prompt_tokens
    from_end = router.config.truncation_side == "left"
    return [examined_text(prompt, max_chars, from_end) for prompt in prompts]


def count_with_unexamined(n_tokens: int, examined: str, prompt: str) -> int:
    """A prompt's token count from its examined part's `n_tokens`: the same density is assumed for the rest."""
    if len(examined) >= len(prompt):
        return n_tokens
    return math.ceil(n_tokens * len(prompt) / max(1, len(examined)))


def _long_tensor(values: array.array) -> torch.Tensor:
    """An int64 tensor over an `array('q')` (about 3 times faster than `torch.tensor` from a list)."""
    return torch.frombuffer(values, dtype=torch.long) if len(values) else torch.zeros(0, dtype=torch.long)


def pad_batch(token_ids: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad to the longest sequence: → input_ids `(batch, seq)`, attention_mask `(batch, seq)`."""
    longest = max(len(ids) for ids in token_ids)
    input_ids = torch.full((len(token_ids), longest), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(token_ids), longest), dtype=torch.long)
    for row, ids in enumerate(token_ids):
        input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        attention_mask[row, : len(ids)] = 1
    return input_ids, attention_mask


class _ShortSwitchInterval:
    """
    Python's GIL switch interval at `PIPELINE_SWITCH_INTERVAL_S` while at least one static pipeline
    runs, restored when the last one ends (concurrent route() calls share the process-wide setting).
    The prediction thread needs the GIL back after each torch call while tokenizing holds it; at the
    default 5 ms it waits that long each time (about 10% of the throughput).
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._active = 0
        self._saved = None

    def __enter__(self) -> None:
        with self._lock:
            if self._active == 0:
                self._saved = sys.getswitchinterval()
                sys.setswitchinterval(min(self._saved, PIPELINE_SWITCH_INTERVAL_S))
            self._active += 1

    def __exit__(self, *exc_info) -> None:
        with self._lock:
            self._active -= 1
            if self._active == 0:
                sys.setswitchinterval(self._saved)


_SHORT_SWITCH_INTERVAL = _ShortSwitchInterval()


class PromptEncoder:
    """
    How a router turns prompts into embeddings and predictions: one implementation per
    `config.encoder_kind` ([`TransformerPromptEncoder`], [`StaticPromptEncoder`]), chosen once when
    the router is built ([`prompt_encoder_for`]), so the router never branches on the kind.

    The encoder's weights are the router's `encoder` module (saved as `encoder.*` in
    `model.safetensors`, built by [`build_module`]); an implementation reads them, the tokenizer and
    the predictor from the router each method is given, and keeps nothing but caches of its own.
    """

    kind: str

    @staticmethod
    def build_module(config: CarrotConfig) -> nn.Module:
        """The encoder module `config` describes (weights unset)."""
        raise NotImplementedError

    def embedding_size(self, router) -> int:
        """Width of the embeddings the encoder gives (and the predictor reads)."""
        raise NotImplementedError

    def prepare_tokenizer(self, router, tokenizer, source):
        """The tokenizer made ready for this encoder (given with `set_tokenizer` or loaded)."""
        return tokenizer

    def check_loaded_tokenizer(self, router, tokenizer, source) -> None:
        """Raise `OSError` when a tokenizer loaded from `source` cannot be this encoder's."""

    def embed(self, router, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """`(batch, seq)` token ids → `(batch, hidden)` float32 L2-normalised embeddings."""
        raise NotImplementedError

    def tokenize(self, router, prompts: list[str]) -> tuple[list, list[int], list[bool]]:
        """
        Prompts → token ids cut to `max_prompt_tokens`, input token counts (untruncated, at least
        one per `MAX_BYTES_PER_TOKEN` UTF-8 bytes), truncated flags.
        """
        raise NotImplementedError

    def encode(self, router, prompts: list[str], batch_size: int, progress: bool) -> PromptEncoding:
        """Checked prompts → their `PromptEncoding`, embeddings `(batch, hidden)` on the CPU."""
        raise NotImplementedError

    def predict(self, router, prompts: list[str], batch_size: int, progress: bool) -> PromptPredictions:
        """Checked prompts → the router's predictions for them."""
        encoding = router.encode(prompts, batch_size=batch_size, progress=progress)  # checks batch_size
        return router.predict_encoded(encoding, batch_size=batch_size)


class TransformerPromptEncoder(PromptEncoder):
    """A BERT-family transformer, mean pooled over real tokens and L2-normalised (e.g. all-MiniLM-L6-v2)."""

    kind = "transformer"

    @staticmethod
    def build_module(config: CarrotConfig) -> nn.Module:
        return _transformer_encoder(config)

    def embedding_size(self, router) -> int:
        return router.encoder.config.hidden_size

    def check_loaded_tokenizer(self, router, tokenizer, source) -> None:
        vocab_size = getattr(getattr(router.encoder, "config", None), "vocab_size", None)
        if not isinstance(vocab_size, int):
            return
        # A tokenizer a little smaller than the embedding table is normal (padded tables); one with a
        # few special tokens only, or with ids beyond the table, would route on unknown tokens.
        if not vocab_size // 2 <= len(tokenizer) <= vocab_size:
            raise OSError(
                f"The tokenizer of the router at {source!r} (tokenizer.json) has {len(tokenizer)} tokens but "
                f"its encoder embeds {vocab_size}: it is not the encoder's tokenizer. Save the encoder's "
                "tokenizer with the router (router.set_tokenizer(tok); router.save_pretrained(folder))."
            )

    def embed(self, router, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden_states = router.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        # Pool in float32 whatever the encoder runs in (bfloat16 runs it about 1.8x faster on CPUs
        # with bf16 units), so the predictor, kept in float32, always sees float32 embeddings.
        return F.normalize(mean_pool(hidden_states.float(), attention_mask), p=2, dim=-1)

    def tokenize(self, router, prompts: list[str]) -> tuple[list[list[int]], list[int], list[bool]]:
        """As [`PromptEncoder.tokenize`]; the ids include the special tokens."""
        tokenizer = router.tokenizer
        max_length = router.config.max_prompt_tokens
        examined = examined_texts(router, prompts)
        # The tokenizer's padding/truncation state is shared; concurrent calls must not interleave.
        with router._tokenizer_lock:
            encoded = tokenizer(examined, add_special_tokens=True, truncation=False, verbose=False)["input_ids"]
            n_special = tokenizer.num_special_tokens_to_add(pair=False)
        token_ids, input_tokens, truncated = [], [], []
        keep_end = router.config.truncation_side == "left"
        for prompt, text, ids in zip(prompts, examined, encoded):
            n_tokens = count_with_unexamined(len(ids) - n_special, text, prompt)
            input_tokens.append(max(n_tokens, math.ceil(len(prompt.encode("utf-8")) / MAX_BYTES_PER_TOKEN)))
            if len(ids) > max_length:
                if keep_end:  # keep the opening special token and the last tokens (the question)
                    ids = ids[:1] + ids[-(max_length - 1) :]
                else:  # keep the leading tokens and the closing special token ([SEP] / </s>)
                    ids = ids[: max_length - 1] + ids[-1:]
                truncated.append(True)
            else:
                truncated.append(len(text) < len(prompt))
            token_ids.append(ids)
        return token_ids, input_tokens, truncated

    def encode(self, router, prompts: list[str], batch_size: int, progress: bool) -> PromptEncoding:
        """
        `TOKENIZE_CHUNK_PROMPTS` prompts tokenized at a time (memory stays flat however many prompts
        are given), each chunk sorted by length so that each batch pads little, encoded under
        inference mode, and returned in input order.
        """
        embeddings = torch.empty(len(prompts), self.embedding_size(router))
        input_tokens = torch.empty(len(prompts))
        truncated = []
        pad_id = router.tokenizer.pad_token_id or 0
        n_batches = sum(
            math.ceil(min(TOKENIZE_CHUNK_PROMPTS, len(prompts) - start) / batch_size)
            for start in range(0, len(prompts), TOKENIZE_CHUNK_PROMPTS)
        )
        bar = tqdm(total=n_batches, desc="encoding prompts", unit="batch", disable=not progress)
        for offset in range(0, len(prompts), TOKENIZE_CHUNK_PROMPTS):
            chunk = prompts[offset : offset + TOKENIZE_CHUNK_PROMPTS]
            token_ids, counts, chunk_truncated = self.tokenize(router, chunk)
            order = sorted(range(len(chunk)), key=lambda i: len(token_ids[i]))
            for start in range(0, len(order), batch_size):
                rows = order[start : start + batch_size]
                input_ids, attention_mask = pad_batch([token_ids[i] for i in rows], pad_id)
                with torch.inference_mode():
                    batch_embeddings = self.embed(router, input_ids.to(router.device), attention_mask.to(router.device))
                embeddings[torch.tensor(rows) + offset] = batch_embeddings.float().cpu()
                bar.update(1)
            input_tokens[offset : offset + len(chunk)] = torch.tensor(counts, dtype=torch.float32)
            truncated.extend(chunk_truncated)
        bar.close()
        return PromptEncoding(embeddings, input_tokens, truncated, fallback_embedding=[False] * len(prompts))


class StaticPromptEncoder(PromptEncoder):
    """
    The static token table ([`CarrotStaticEncoder`]): a bag of the prompt's known tokens, no attention
    and no positions, so tokenizing is the main cost; it takes the cached word-piece fast path
    ([`CachedWordPieceTokenizer`]) and overlaps tokenizing with the predictor's search.
    """

    kind = "static"

    def __init__(self):
        # (backend tokenizer, its CachedWordPieceTokenizer or None), made on first use.
        self.word_piece_cache = None

    @staticmethod
    def build_module(config: CarrotConfig) -> nn.Module:
        return CarrotStaticEncoder(config.static_vocab_size, config.static_embedding_size)

    def embedding_size(self, router) -> int:
        return router.encoder.embedding_size

    def prepare_tokenizer(self, router, tokenizer, source):
        """
        Check that a static router's tokenizer indexes its token table (one row per token) and turn
        off any padding or truncation its backend was saved with (prompts are cut by the router).
        """
        size = len(tokenizer)
        if size != router.config.static_vocab_size:
            raise ValueError(
                f"The static encoder's token table has {router.config.static_vocab_size} rows but the tokenizer "
                f"({source}) has {size} tokens: they come from different distillations. Save the router with "
                "the tokenizer it was distilled with (the one `distill_static_encoder` returned)."
            )
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is None:
            raise ValueError(f"A static router needs a fast (tokenizers-backed) tokenizer; {source} is not one.")
        if backend.padding is not None:
            backend.no_padding()
        if backend.truncation is not None:
            backend.no_truncation()
        return tokenizer

    def embed(self, router, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return router.encoder(input_ids, attention_mask)

    def tokenize(self, router, prompts: list[str]) -> tuple[list[array.array], list[int], list[bool]]:
        """
        As [`PromptEncoder.tokenize`], each prompt's ids an `array(TOKEN_ID_TYPE)`. The tokenizer
        adds no special tokens (distillation removed them) and its unknown token has no row worth
        averaging: like model2vec, it is dropped, and the last `max_prompt_tokens` known tokens are
        kept (the first ones with truncation_side="right"). With the word-piece fast path only a
        window at the kept end gets its ids built; the rest of the prompt is only counted
        (`CachedWordPieceTokenizer.window_ids`).
        """
        tokenizer = router.tokenizer
        unknown = tokenizer.unk_token_id
        limit = router.config.max_prompt_tokens
        keep_end = router.config.truncation_side == "left"
        examined = examined_texts(router, prompts)
        with router._tokenizer_lock:
            backend = tokenizer.backend_tokenizer
            if self.word_piece_cache is None or self.word_piece_cache[0] is not backend:
                self.word_piece_cache = (backend, CachedWordPieceTokenizer.for_tokenizer(tokenizer))
            fast_path = self.word_piece_cache[1]
            if fast_path is not None:
                encoded, counts = fast_path.window_ids(examined, limit, from_end=keep_end, skip_id=unknown)
            else:
                encodings = backend.encode_batch_fast(examined, add_special_tokens=False)
                encoded = [array.array(TOKEN_ID_TYPE, encoding.ids) for encoding in encodings]
                counts = [len(ids) for ids in encoded]
        token_ids, input_tokens, truncated = [], [], []
        for prompt, text, ids, n_tokens in zip(prompts, examined, encoded, counts):
            n_bytes = len(prompt) if prompt.isascii() else len(prompt.encode("utf-8"))
            input_tokens.append(max(count_with_unexamined(n_tokens, text, prompt), math.ceil(n_bytes / MAX_BYTES_PER_TOKEN)))
            cut = n_tokens > len(ids) or len(text) < len(prompt)  # tokens outside the window or the examined text
            if unknown is not None and unknown in ids:
                ids = array.array(TOKEN_ID_TYPE, [i for i in ids if i != unknown])
            if len(ids) > limit:
                ids = ids[-limit:] if keep_end else ids[:limit]
                cut = True
            truncated.append(cut)
            token_ids.append(ids)
        return token_ids, input_tokens, truncated

    @torch.inference_mode()
    def encode(self, router, prompts: list[str], batch_size: int = 64, progress: bool = False) -> PromptEncoding:
        """
        `TOKENIZE_CHUNK_PROMPTS` prompts at a time (memory stays flat), each chunk in one table lookup,
        with no sorting or padding (a bag of tokens has no length).
        """
        parts = [
            self._encode_chunk(router, prompts[start : start + TOKENIZE_CHUNK_PROMPTS])
            for start in range(0, len(prompts), TOKENIZE_CHUNK_PROMPTS)
        ]
        if len(parts) == 1:
            return parts[0]
        return PromptEncoding(
            torch.cat([part.embeddings for part in parts]) if parts else torch.zeros(0, self.embedding_size(router)),
            torch.cat([part.input_tokens for part in parts]) if parts else torch.zeros(0),
            [flag for part in parts for flag in part.truncated],
            fallback_embedding=[flag for part in parts for flag in part.fallback_embedding],
        )

    def _encode_chunk(self, router, prompts: list[str]) -> PromptEncoding:
        """One chunk's prompts → their `PromptEncoding`, in one table lookup."""
        token_ids, input_tokens, truncated = self.tokenize(router, prompts)
        return PromptEncoding(
            self.embed_ids(router, token_ids),
            torch.tensor(input_tokens, dtype=torch.float32),
            truncated,
            fallback_embedding=[len(ids) == 0 for ids in token_ids],
        )

    def embed_ids(self, router, token_ids: Sequence[array.array]) -> torch.Tensor:
        """Prompts' token ids (`array(TOKEN_ID_TYPE)` each) → their `(batch, embedding_size)` embeddings, in one table lookup."""
        lengths = [len(ids) for ids in token_ids]
        device = router.encoder.token_embeddings.weight.device
        offsets = _long_tensor(array.array("q", [0, *itertools.accumulate(lengths[:-1])])).to(device)
        flat = bytearray().join(token_ids)  # the packed ids in one writable buffer, no Python ints
        flat = torch.frombuffer(flat, dtype=_TOKEN_ID_DTYPE).long() if flat else torch.zeros(0, dtype=torch.long)
        empty = torch.tensor([n == 0 for n in lengths], device=device) if 0 in lengths else False
        return router.encoder.embed_bags(flat.to(device), offsets, empty).cpu()

    @torch.inference_mode()
    def predict(self, router, prompts: list[str], batch_size: int = 64, progress: bool = False) -> PromptPredictions:
        """
        `TOKENIZE_CHUNK_PROMPTS` prompts at a time. Tokenizing is Python work that holds the GIL, the
        table lookup and the search are a few large torch calls that release it: while one chunk is
        embedded and searched on a worker thread, the next one is tokenized, so both cores of a small
        machine work. The many small calls that finish the predictions run once, on the whole batch,
        after both: on the worker each would wait for the GIL that tokenizing holds.
        """
        # Chunks of equal size: a small last chunk would leave its predecessor's search with nothing to overlap.
        size = max(1, math.ceil(len(prompts) / max(1, math.ceil(len(prompts) / TOKENIZE_CHUNK_PROMPTS))))
        chunks = [prompts[start : start + size] for start in range(0, len(prompts), size)]
        if len(chunks) <= 1:
            return router.predict_encoded(self.encode(router, prompts))
        tokenized, searches = [], []
        with _SHORT_SWITCH_INTERVAL, ThreadPoolExecutor(max_workers=1, thread_name_prefix="carrot-predict") as pool:
            for chunk in chunks:
                tokenized.append(self.tokenize(router, chunk))
                searches.append(pool.submit(self._search_chunk, router, tokenized[-1][0]))
            searched = [future.result() for future in searches]
        quality, log_tokens, similarity = (
            None if parts[0] is None else torch.cat(parts) for parts in zip(*searched)
        )
        quality, output_tokens, support, low, high = (
            value.float().cpu() for value in router._finish_predictions(quality, log_tokens, similarity)
        )
        fallback = [len(ids) == 0 for chunk in tokenized for ids in chunk[0]]
        return PromptPredictions(
            quality, output_tokens, torch.tensor([n for chunk in tokenized for n in chunk[1]], dtype=torch.float32),
            [flag for chunk in tokenized for flag in chunk[2]],
            candidate_models=list(router.config.candidate_models),
            support=support, quality_low=low, quality_high=high, fallback_embedding=fallback,
        )

    @torch.inference_mode()
    def _search_chunk(self, router, token_ids: list[array.array]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """One chunk's token ids → what the router's `_search_predictions` gives for its embeddings."""
        embeddings = self.embed_ids(router, token_ids)
        return router._search_predictions(embeddings.to(router.predictor_device, router.predictor_dtype))


def prompt_encoder_for(config: CarrotConfig) -> PromptEncoder:
    """The prompt encoder `config.encoder_kind` names (`"transformer"` or `"static"`)."""
    return StaticPromptEncoder() if config.encoder_kind == "static" else TransformerPromptEncoder()
