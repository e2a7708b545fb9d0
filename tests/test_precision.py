"""Running the encoder in bfloat16: the predictor stays float32, decisions follow float32's closely."""

import pytest
import torch
from transformers import AutoModel

from carrot_hub.cli import main
from carrot_hub.precision import cpu_has_native_bfloat16, resolve_encoder_dtype

from .conftest import TINY_PROMPTS


def test_resolve_encoder_dtype():
    assert resolve_encoder_dtype("float32") is torch.float32
    assert resolve_encoder_dtype(torch.bfloat16) is torch.bfloat16
    expected_auto = torch.bfloat16 if cpu_has_native_bfloat16() else torch.float32
    assert resolve_encoder_dtype("auto") is expected_auto and resolve_encoder_dtype(None) is expected_auto
    for bad in ("float16", "fp32", torch.float64):
        with pytest.raises(ValueError, match="auto, float32, bfloat16"):
            resolve_encoder_dtype(bad)


@pytest.mark.parametrize("kind", ["knn", "mlp"])
def test_bfloat16_encoder_keeps_a_float32_predictor(kind, saved_knn_router, tmp_path, tiny_table):
    if kind == "knn":
        folder = saved_knn_router
    else:
        from carrot_hub.building import new_router

        from .conftest import TINY_MODELS, TINY_PRICES

        folder = tmp_path / "mlp"
        new_router(TINY_MODELS, TINY_PRICES, predictor_kind="mlp", cost_scale=1e-3).save_pretrained(folder)
    exact = AutoModel.from_pretrained(folder)
    fast = AutoModel.from_pretrained(folder, dtype=torch.bfloat16)
    assert next(fast.encoder.parameters()).dtype == torch.bfloat16
    assert all(t.dtype == torch.float32 for t in [*fast.predictor.parameters(), *fast.predictor.buffers()])
    assert fast.predictor_dtype == torch.float32
    exact_encoding, fast_encoding = exact.encode(TINY_PROMPTS), fast.encode(TINY_PROMPTS)
    assert fast_encoding.embeddings.dtype == torch.float32
    # bfloat16 keeps 8 bits of mantissa: the unit-length embeddings move by about 1e-2 at most.
    assert torch.allclose(fast_encoding.embeddings, exact_encoding.embeddings, atol=3e-2)
    assert (fast_encoding.embeddings - exact_encoding.embeddings).abs().max() > 0  # it really ran in bf16
    exact_predictions, fast_predictions = exact.predict(TINY_PROMPTS), fast.predict(TINY_PROMPTS)
    assert torch.allclose(fast_predictions.quality, exact_predictions.quality, atol=0.05)
    for mu in (0.0, 0.5, 1.0):
        exact_decision, fast_decision = exact.route(TINY_PROMPTS, mu=mu), fast.route(TINY_PROMPTS, mu=mu)
        # Wherever float32's choice leads clearly (untrained heads make near-ties), bfloat16 agrees.
        best_two = exact_decision.utility.topk(2, dim=1).values
        clear = ((best_two[:, 0] - best_two[:, 1]) > 0.05).tolist()
        assert [m for m, c in zip(fast_decision.models, clear) if c] == [m for m, c in zip(exact_decision.models, clear) if c]
        if kind == "knn":
            assert any(clear)


def test_cli_dtype_option(saved_knn_router, capsys):
    code = main(["route", "--model", str(saved_knn_router), "--dtype", "bfloat16", "--format", "jsonl", "--mu", "1",
                 TINY_PROMPTS[0]])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert '"model"' in out
    code = main(["route", "--model", str(saved_knn_router), "--dtype", "float16", TINY_PROMPTS[0]])
    _, err = capsys.readouterr()
    assert code == 2 and "--dtype" in err and "float16" in err and "Traceback" not in err
