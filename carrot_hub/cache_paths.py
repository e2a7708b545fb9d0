"""Where carrot_hub keeps what it builds once (a leaf module: the default routers, distilled static
encoders and converted local models all live under its root)."""

import os
from pathlib import Path


def cache_root() -> Path:
    """Where carrot_hub keeps what it builds once (the default router, converted models):
    $CARROT_HUB_CACHE, else ~/.cache/carrot_hub."""
    return Path(os.environ.get("CARROT_HUB_CACHE") or Path.home() / ".cache" / "carrot_hub")
