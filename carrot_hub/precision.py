"""
The dtype to run a router's encoder in.

The encoder is nearly all of a router's compute. On a CPU with native bfloat16 units (AVX512-BF16
or AMX) a bfloat16 encoder runs about 1.8 times as fast as a float32 one (routing one RouterBench
prompt end to end: 24 ms instead of 36 ms on two cores), and its decisions agree with float32's on
about 99% of RouterBench prompts (the kNN memory or heads stay float32: only the encoder is
halved). Elsewhere bfloat16 is emulated and slower, so "auto" keeps float32 there.
"""

import torch

ENCODER_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
ENCODER_DTYPE_CHOICES = ("auto", *ENCODER_DTYPES)


def cpu_has_native_bfloat16() -> bool:
    """Whether this CPU computes bfloat16 matrix products in hardware (AVX512-BF16 or AMX tiles)."""
    cpu = getattr(torch, "cpu", None)
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    try:
        return any(bool(getattr(cpu, name)()) for name in checks if hasattr(cpu, name))
    except RuntimeError:  # a torch build without these probes answers nothing useful
        return False


def resolve_encoder_dtype(choice: "str | torch.dtype | None") -> torch.dtype:
    """
    `"auto"` (or None) → bfloat16 where this CPU has native bfloat16 units, else float32;
    `"float32"` / `"bfloat16"` (or the torch dtypes) → themselves.
    """
    if choice is None or choice == "auto":
        return torch.bfloat16 if cpu_has_native_bfloat16() else torch.float32
    if isinstance(choice, torch.dtype):
        if choice in ENCODER_DTYPES.values():
            return choice
    elif choice in ENCODER_DTYPES:
        return ENCODER_DTYPES[choice]
    raise ValueError(
        f"The encoder dtype must be one of {', '.join(ENCODER_DTYPE_CHOICES)}, got {choice!r}. "
        "Use float32 for results identical on every machine, bfloat16 for speed on CPUs with bf16 units."
    )
