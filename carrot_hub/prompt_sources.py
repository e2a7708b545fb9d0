"""Where prompts to route come from: arguments, a text file, JSONL, parquet, stdin or a Hub data set.

Every source is read as a stream of `(index, prompt)` pairs in input order, so that an input far
larger than memory can be routed chunk by chunk, and so that several processes can each take
every `world_size`-th prompt of the same stream (see `carrot_hub.sharding`).
"""

import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .errors import BadInputError
from .hub_checks import HUB_ID_OR_NAME

TEXT_SUFFIXES = (".txt", ".text", ".prompts")
JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json")
PARQUET_SUFFIXES = (".parquet", ".pq")


class _NotMine:
    """The marker readers yield for a record that belongs to another process (not parsed)."""

    def __repr__(self) -> str:
        return "NOT_MINE"


NOT_MINE = _NotMine()  # a prompt can be None (a null in JSON or parquet): that one is bad input


class InputError(BadInputError):
    """The prompts given cannot be read as asked (a usage error: the user can fix the input or option)."""


class SourceUnavailableError(OSError):
    """The prompts live somewhere that cannot be reached now (e.g. a Hub data set while offline)."""


@dataclass
class PromptSource:
    """
    One input of prompts.

    Args:
        kind: `"list"`, `"text"`, `"jsonl"`, `"parquet"`, `"stdin"` or `"hub"`.
        location: the file path or Hub id (None for `"list"` and `"stdin"`).
        field: the column / JSON key holding the prompt (JSONL, parquet, Hub).
        prompts: the prompts themselves for `"list"`.
        split: the split of a Hub data set.
    """

    kind: str
    location: str | None = None
    field: str = "prompt"
    prompts: list[str] | None = None
    split: str = "train"

    @property
    def name(self) -> str:
        return {"list": "the command line", "stdin": "standard input"}.get(self.kind, str(self.location))

    def size_hint(self) -> int | None:
        """Number of prompts when it is cheap to know (for the progress bar), else None."""
        if self.kind == "list":
            return len(self.prompts or [])
        if self.kind == "parquet":
            import pyarrow.parquet as pq

            try:
                return pq.ParquetFile(self.location).metadata.num_rows
            except Exception:
                return None
        return None

    def iter_prompts(self, rank: int = 0, world_size: int = 1) -> Iterator[tuple[int, str]]:
        """
        Yield `(index, prompt)` for the prompts with `index % world_size == rank`, in input order.
        Raises [`InputError`] naming the line / row when a prompt is missing or empty.
        """
        reader = {
            "list": self._iter_list,
            "text": self._iter_text,
            "stdin": self._iter_stdin,
            "jsonl": self._iter_jsonl,
            "parquet": self._iter_parquet,
            "hub": self._iter_hub,
        }[self.kind]
        for index, (where, prompt) in enumerate(reader(rank, world_size)):
            if index % world_size != rank:
                continue
            if prompt is NOT_MINE:  # the reader skipped parsing a row another process owns
                continue
            yield index, _check_prompt(prompt, where, self)

    # Readers yield (where, prompt) for every record; they may yield prompt=NOT_MINE for rows that
    # belong to another process when parsing them would be wasted work.

    def _iter_list(self, rank, world_size):
        for position, prompt in enumerate(self.prompts or []):
            yield f"prompt {position + 1}", prompt

    def _iter_text_lines(self, lines):
        for number, line in lines:
            line = line.rstrip("\r\n")
            if line.strip():  # blank lines separate nothing: skip them
                yield f"line {number}", line

    def _iter_text(self, rank, world_size):
        with _open_binary(self.location) as handle:
            yield from self._iter_text_lines(_utf8_lines(handle, self.location))

    def _iter_stdin(self, rank, world_size):
        stdin = sys.stdin
        if stdin is None or stdin.closed:
            raise InputError(
                "Standard input is closed, so there are no prompts to read: pipe them in "
                "(`cat prompts.txt | carrot route -`) or pass them as arguments or with --file."
            )
        yield from self._iter_text_lines(_utf8_lines(getattr(stdin, "buffer", stdin), "standard input"))

    def _iter_jsonl(self, rank, world_size):
        record_index = 0
        with _open_binary(self.location) as handle:
            for number, line in _utf8_lines(handle, self.location):
                if not line.strip():
                    continue
                mine = record_index % world_size == rank
                record_index += 1
                if not mine:
                    yield f"line {number}", NOT_MINE
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as error:
                    raise InputError(f"{self.location} line {number} is not valid JSON ({error.msg}).") from None
                if not isinstance(record, dict):
                    raise InputError(
                        f"{self.location} line {number} is a JSON {type(record).__name__}, not an object "
                        f"with a {self.field!r} field."
                    )
                if self.field not in record:
                    raise InputError(
                        f"{self.location} line {number} has no field {self.field!r} "
                        f"(it has: {', '.join(map(str, record)) or 'nothing'}); pass --field NAME."
                    )
                yield f"line {number}", record[self.field]

    def _iter_parquet(self, rank, world_size):
        import pyarrow.parquet as pq

        try:
            parquet = pq.ParquetFile(self.location)
        except Exception as error:
            raise InputError(f"Cannot read {self.location} as parquet: {_first_line(error)}") from None
        columns = parquet.schema_arrow.names
        if self.field not in columns:
            raise InputError(
                f"{self.location} has no column {self.field!r} (it has: {', '.join(columns)}); pass --field NAME."
            )
        row = 0
        for batch in parquet.iter_batches(columns=[self.field], batch_size=8192):
            for prompt in batch.column(0).to_pylist():
                row += 1
                yield f"row {row}", prompt

    def _iter_hub(self, rank, world_size):
        try:
            from datasets import load_dataset

            dataset = load_dataset(self.location, split=self.split, streaming=True)
            rows = iter(dataset)
            first = next(rows, None)
        except Exception as error:
            raise SourceUnavailableError(
                f"Cannot load the Hub data set {self.location!r} (split {self.split!r}): {_first_line(error)} "
                "If you are offline (HF_HUB_OFFLINE=1), pass a local JSONL or parquet file instead."
            ) from None
        if first is None:
            return
        if self.field not in first:
            raise InputError(
                f"The Hub data set {self.location!r} has no column {self.field!r} "
                f"(it has: {', '.join(first)}); pass --field NAME."
            )
        row = 1
        yield f"row {row}", first[self.field]
        for record in rows:
            row += 1
            yield f"row {row}", record[self.field]


def resolve_source(
    prompts: list[str] | None = None,
    file: str | None = None,
    jsonl: str | None = None,
    parquet: str | None = None,
    input: str | None = None,
    field: str = "prompt",
    split: str = "train",
    stdin_is_tty: bool | None = None,
) -> PromptSource:
    """
    Turn the route/calibrate options into one [`PromptSource`]. Exactly one of `prompts` (a `-`
    alone means stdin), `file`, `jsonl`, `parquet`, `input` may be given; with none, standard input
    is read when it is not a terminal.
    """
    given = [name for name, value in (("prompts", prompts), ("--file", file), ("--jsonl", jsonl),
                                      ("--parquet", parquet), ("--input", input)) if value]
    if len(given) > 1:
        raise InputError(f"Give the prompts one way only, not {' and '.join(given)}.")
    if prompts:
        if prompts == ["-"]:
            return PromptSource("stdin", field=field)
        return PromptSource("list", prompts=list(prompts), field=field)
    if file:
        return PromptSource("text", _existing_file(file), field=field)
    if jsonl:
        return PromptSource("jsonl", _existing_file(jsonl), field=field)
    if parquet:
        return PromptSource("parquet", _existing_file(parquet), field=field)
    if input:
        path = Path(input).expanduser()
        if path.is_file():
            suffix = path.suffix.lower()
            kind = "jsonl" if suffix in JSONL_SUFFIXES else "parquet" if suffix in PARQUET_SUFFIXES else "text"
            return PromptSource(kind, str(path), field=field)
        if path.exists():
            raise InputError(f"--input {input} is a folder; give a JSONL, parquet or text file, or a Hub data set id.")
        if HUB_ID_OR_NAME.match(input) and path.suffix.lower() not in (*JSONL_SUFFIXES, *PARQUET_SUFFIXES, *TEXT_SUFFIXES):
            return PromptSource("hub", input, field=field, split=split)
        raise InputError(f"--input {input}: no such file.")
    if stdin_is_tty is None:
        stdin_is_tty = sys.stdin is None or sys.stdin.isatty()
    if stdin_is_tty:
        raise InputError(
            "No prompts given: pass them as arguments, or --file / --jsonl / --parquet / --input, or pipe them in."
        )
    return PromptSource("stdin", field=field)


def _existing_file(name: str) -> str:
    path = Path(name).expanduser()
    if not path.is_file():
        raise InputError(f"{name}: no such file.")
    return str(path)


def _open_binary(location: str):
    try:
        return open(location, "rb")
    except OSError as error:
        raise InputError(f"Cannot read {location}: {error.strerror or error}.") from None


def _utf8_lines(handle, name: str) -> Iterator[tuple[int, str]]:
    """`(line number, text)` of a binary (or text) handle, each line decoded as UTF-8 (a leading BOM dropped)."""
    for number, line in enumerate(handle, start=1):
        if isinstance(line, str):
            yield number, line
            continue
        try:
            yield number, line.decode("utf-8-sig" if number == 1 else "utf-8")
        except UnicodeDecodeError as error:
            raise InputError(
                f"{name} line {number} is not UTF-8 text (byte {line[error.start:error.start + 1]!r} at "
                f"column {error.start + 1}); save the file as UTF-8."
            ) from None


def _check_prompt(prompt, where: str, source: PromptSource) -> str:
    from .modeling_carrot import prompt_has_content

    if prompt is None:
        raise InputError(f"{source.name} {where}: the prompt is null; remove the row or give it text.")
    if not isinstance(prompt, str):
        raise InputError(
            f"{source.name} {where}: the prompt is a {type(prompt).__name__}, not a string ({prompt!r:.60})."
        )
    if not prompt_has_content(prompt):
        raise InputError(
            f"{source.name} {where}: the prompt is empty (nothing but whitespace, control or zero-width "
            "characters); remove the row or give it text."
        )
    return prompt


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
