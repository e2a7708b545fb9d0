"""The static encoder's fast tokenizer: the exact ids of a lowercasing BERT WordPiece tokenizer,
found from cached whitespace-separated chunks.

This file travels to the Hub next to `modeling_carrot.py` as remote code: it imports only torch,
transformers, the standard library and its flat siblings (relative imports).
"""

import array
import json
import re
from collections.abc import Sequence

import torch


# A static router's token ids travel as `array.array` of C ints (4 bytes), not lists of Python ints.
TOKEN_ID_TYPE = "i"
_TOKEN_ID_BYTES = array.array(TOKEN_ID_TYPE).itemsize
_TOKEN_ID_DTYPE = {4: torch.int32, 8: torch.int64}[_TOKEN_ID_BYTES]

_WORD_BOUNDARY = re.compile(r"[ \t\n\r]+")  # where BERT's normalizer and pre-tokenizer always split
# ASCII control characters BERT's `clean_text` drops (tab, newline and return are whitespace).
_ASCII_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")

class CachedWordPieceTokenizer:
    """
    The same token ids as a lowercasing BERT WordPiece tokenizer (`tokenizers` backend), found faster.

    For ASCII text BERT's normalizer only lowercases and its pre-tokenizer splits at spaces, tabs
    and newlines first (then between letters/digits and punctuation, within each piece). So a
    prompt's ids are the concatenation of the ids of its whitespace-separated chunks, each
    tokenized on its own, and a chunk's ids can be cached: `str.split` and one dictionary lookup
    per chunk replace the tokenizer's per-character work (RouterBench's prompts tokenize about ten
    times as fast as with the backend; caching words instead of chunks ran at half that speed).
    A chunk's ids are kept packed as C ints (`bytes`), so a prompt's ids are one `bytes.join` of
    its chunks' ([`packed`]): no Python int per token is made, and a batch's ids reach torch as one
    buffer (building and flattening lists of ints took a third of the tokenizing time).
    Chunks not yet cached are tokenized by the backend, in one
    batch. Text with non-ASCII or control characters is split at spaces, tabs and newlines only and
    its chunks are cached as written; prompts containing an added token's text go through the
    backend whole. So every prompt gets exactly the backend's ids. [`count`] counts a text's ids
    without building them, line by line, caching each line's count. The caches hold at most
    `max_chunks` chunks of at most `max_chunk_chars` characters (a prompt with a longer chunk goes to
    the backend whole) and `max_lines` lines of at most `max_line_chars` (longer ones are counted
    each time); a full cache is emptied.
    """

    def __init__(
        self,
        backend,
        added_tokens: Sequence[str],
        max_chunks: int = 100_000,
        max_chunk_chars: int = 200,
        max_lines: int = 20_000,
        max_line_chars: int = 1_000,
    ):
        self.backend = backend
        self.max_chunk_chars, self.max_lines, self.max_line_chars = max_chunk_chars, max_lines, max_line_chars
        # One search for all added tokens: an added token's text anywhere sends the prompt to the backend.
        added = [re.escape(token.lower()) for token in added_tokens if token]
        self._added_token = re.compile("|".join(added)) if added else None
        self.max_chunks = max_chunks
        self._chunk_ids: dict[str, bytes] = {}  # chunk → its ids, packed as `array(TOKEN_ID_TYPE)`
        self._line_lengths: dict[str, int] = {}  # `count`'s cache, cleared as the chunks' is

    @classmethod
    def for_tokenizer(cls, tokenizer) -> "CachedWordPieceTokenizer | None":
        """The fast path for `tokenizer`, or None when it is not a lowercasing BERT WordPiece tokenizer."""
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is None:
            return None
        try:
            spec = json.loads(backend.to_str())
        except Exception:
            return None
        normalizer, pre_tokenizer, model = (spec.get(key) or {} for key in ("normalizer", "pre_tokenizer", "model"))
        is_bert_wordpiece = (
            normalizer.get("type") == "BertNormalizer"
            and normalizer.get("lowercase") is True
            and pre_tokenizer.get("type") == "BertPreTokenizer"
            and model.get("type") == "WordPiece"
        )
        if not is_bert_wordpiece:
            return None
        return cls(backend, [token.get("content", "") for token in spec.get("added_tokens") or []])

    def _chunks(self, prompt: str) -> list[str] | None:
        """The prompt's chunks as cache keys, or None when it must go through the backend whole."""
        if prompt.isascii() and not _ASCII_CONTROL.search(prompt):
            lowered = prompt.lower()
            if self._added_token is not None and self._added_token.search(lowered):
                return None
            # Only space, tab, newline and carriage return are left to split at (other ASCII
            # controls, which str.split would also take for whitespace, were excluded above).
            return lowered.split()
        if self._added_token is not None and self._added_token.search(prompt.lower()):
            return None
        # Other text is split only where BERT surely splits, each chunk kept as written: its
        # normalizer (lowercasing, accents, Chinese characters, control characters) works
        # character by character, so the backend gives a chunk alone the ids it gives it in context.
        return [chunk for chunk in _WORD_BOUNDARY.split(prompt) if chunk]

    def __call__(self, prompts: Sequence[str]) -> list[list[int]]:
        """Prompts → their token ids without special tokens, as the backend gives them."""
        return [ids.tolist() for ids in self.packed(prompts)]

    def packed(self, prompts: Sequence[str]) -> list[array.array]:
        """As calling it, each prompt's ids as an `array(TOKEN_ID_TYPE)`, joined from the cache without Python ints."""
        chunks = [self._chunks(prompt) for prompt in prompts]
        ids: list[array.array | None] = [None] * len(prompts)
        join, lookup = b"".join, self._chunk_ids.__getitem__
        unseen = []  # positions of prompts with a chunk not cached yet
        for position, prompt_chunks in enumerate(chunks):
            if prompt_chunks is not None:
                try:
                    ids[position] = array.array(TOKEN_ID_TYPE, join(map(lookup, prompt_chunks)))
                except KeyError:
                    unseen.append(position)
        if unseen:
            # A prompt with a chunk too long to keep (a blob without spaces) goes to the backend whole.
            for position in unseen:
                if max(map(len, chunks[position])) > self.max_chunk_chars:
                    chunks[position] = None
            unseen = [position for position in unseen if chunks[position] is not None]
            self._learn_chunks({chunk for position in unseen for chunk in chunks[position]})
            lookup = self._chunk_ids.__getitem__
            for position in unseen:
                ids[position] = array.array(TOKEN_ID_TYPE, join(map(lookup, chunks[position])))
        slow = [position for position, prompt_chunks in enumerate(chunks) if prompt_chunks is None]
        if slow:
            encodings = self.backend.encode_batch_fast([prompts[i] for i in slow], add_special_tokens=False)
            for position, encoding in zip(slow, encodings):
                ids[position] = array.array(TOKEN_ID_TYPE, encoding.ids)
        return ids

    def count(self, texts: Sequence[str]) -> list[int]:
        """
        Texts → their numbers of token ids, as `len(ids)` of `self(texts)` without building the ids.
        Counted line by line (BERT splits at a newline): the lines a few-shot prompt shares with
        the prompts before it are counted once and looked up after that.
        """
        counts = [0] * len(texts)
        lookup = self._line_lengths.__getitem__
        unseen: dict[str, int] = {}
        pending = []  # (text's position, its lines)
        for position, text in enumerate(texts):
            lines = text.split("\n")
            try:
                counts[position] = sum(map(lookup, lines))
            except KeyError:
                pending.append((position, lines))
                unseen.update((line, 0) for line in lines if line not in self._line_lengths)
        if pending:
            new_counts = dict(zip(unseen, self._count_chunks(list(unseen))))
            if len(self._line_lengths) + len(new_counts) > self.max_lines:
                self._line_lengths = {}
            # Long lines are counted each time: keeping them could hold gigabytes of text.
            self._line_lengths.update((line, n) for line, n in new_counts.items() if len(line) <= self.max_line_chars)
            known = self._line_lengths
            for position, text_lines in pending:
                counts[position] = sum(new_counts[line] if line in new_counts else known[line] for line in text_lines)
        return counts

    def _count_chunks(self, texts: list[str]) -> list[int]:
        """Texts → their numbers of token ids, from their cached chunks' ids."""
        counts = [0] * len(texts)
        lookup = self._chunk_ids.__getitem__
        rest = []  # texts with a chunk not cached yet, or for the backend whole
        for position, text in enumerate(texts):
            try:
                counts[position] = sum(map(len, map(lookup, self._chunks(text)))) // _TOKEN_ID_BYTES
            except (KeyError, TypeError):
                rest.append(position)
        for position, ids in zip(rest, self.packed([texts[i] for i in rest])):
            counts[position] = len(ids)
        return counts

    def _learn_chunks(self, chunks: set[str]) -> None:
        """Cache the ids of `chunks` (the cache starts over when it would pass `max_chunks`)."""
        if len(self._chunk_ids) + len(chunks) > self.max_chunks:
            self._chunk_ids = {}
        missing = [chunk for chunk in chunks if chunk not in self._chunk_ids]
        for chunk, encoding in zip(missing, self.backend.encode_batch_fast(missing, add_special_tokens=False)):
            self._chunk_ids[chunk] = array.array(TOKEN_ID_TYPE, encoding.ids).tobytes()

    def window_ids(
        self, prompts: Sequence[str], tokens: int, from_end: bool = True, skip_id: int | None = None
    ) -> tuple[list[array.array], list[int]]:
        """
        Each prompt's ids (an `array(TOKEN_ID_TYPE)`) for a window of whole words at its end (its
        start, `from_end=False`) holding at least `tokens` ids other than `skip_id`, and the
        prompt's number of token ids.

        A router keeps only its last (or first) `max_prompt_tokens` tokens, so building the ids of a
        long prompt's other end is wasted work. A window starts (ends) at a space, tab or newline:
        BERT splits there whatever comes before (after), so the window's ids are exactly the whole
        prompt's ids at that end. It starts at `WINDOW_CHARS_PER_TOKEN` characters per token and
        grows, by the characters per token it found, until it holds enough ids or is the whole
        prompt. The text outside it is only counted, line by line ([`count`]).
        """
        ids: list[array.array | None] = [None] * len(prompts)
        counts = [0] * len(prompts)
        outside: dict[int, str] = {}  # prompt → its text outside the window
        windows = {i: tokens * self.WINDOW_CHARS_PER_TOKEN for i in range(len(prompts))}  # characters, per prompt still to do
        while windows:
            texts = [self._window(prompts[i], window, from_end) for i, window in windows.items()]
            short = {}
            for (i, window), text, text_ids in zip(windows.items(), texts, self.packed(texts)):
                kept = len(text_ids) - (text_ids.count(skip_id) if skip_id is not None else 0)
                prompt = prompts[i]
                if kept >= tokens or len(text) == len(prompt):
                    ids[i], counts[i] = text_ids, len(text_ids)
                    if len(text) < len(prompt):
                        outside[i] = prompt[: len(prompt) - len(text)] if from_end else prompt[len(text) :]
                else:  # grow it by the characters per token seen so far, with a margin
                    short[i] = int(max(window * 1.5, len(text) * 1.25 * tokens / max(kept, 1)))
            windows = short
        for i, n_outside in zip(outside, self.count(list(outside.values()))):
            counts[i] += n_outside
        return ids, counts

    WINDOW_CHARS_PER_TOKEN = 5  # RouterBench averages ~4.3 characters per token; denser text takes a second pass

    @staticmethod
    def _window(prompt: str, n_chars: int, from_end: bool) -> str:
        """About the last (first) `n_chars` characters of `prompt`, cut at a space or newline; the whole prompt when none."""
        if len(prompt) <= n_chars:
            return prompt
        if from_end:
            start = len(prompt) - n_chars
            cut = prompt.find(" ", start)
            if cut < 0 or cut - start > 200:  # no space near: the first newline, tab or return will do
                match = _WORD_BOUNDARY.search(prompt, start)
                cut = match.start() if match else -1
            return prompt[cut:] if cut >= 0 else prompt
        cut = prompt.rfind(" ", 0, n_chars)
        if cut < n_chars - 200:
            cut = max(prompt.rfind(space, 0, n_chars) for space in " \t\n\r")
        return prompt[:cut] if cut > 0 else prompt


def examined_text(prompt: str, max_chars: int, from_end: bool = True, boundary_search: int = 200) -> str:
    """
    `prompt` when it has at most `max_chars` characters, else about its last (first, `from_end=False`)
    `max_chars`, cut at a space, tab or newline within `boundary_search` characters of the cut when
    there is one (so that no word is split), else exactly there.
    """
    if len(prompt) <= max_chars:
        return prompt
    if from_end:
        start = len(prompt) - max_chars
        boundary = _WORD_BOUNDARY.search(prompt, start, start + boundary_search)
        return prompt[boundary.end() if boundary else start :]
    boundary = None
    for boundary in _WORD_BOUNDARY.finditer(prompt, max(0, max_chars - boundary_search), max_chars):
        pass
    return prompt[: boundary.start() if boundary else max_chars]
