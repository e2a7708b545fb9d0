"""Each upstream's speed, measured from served traffic: a moving estimate the gateway routes with.

For every streamed answer the gateway knows the time to first byte and, once the answer is done,
how many output tokens came in how long after it (a plain answer's first byte comes with its last
token, so it says nothing about either part and is not counted). `LatencyTracker` keeps an exponentially weighted
moving average of time to first token and of tokens per second per upstream; `profile()` hands them
to `route(latency=...)` in the router's own format, `{model: {"ttft_s": s, "tokens_per_s": t}}`.
An upstream with fewer than `min_samples` observations has no estimate yet (it is not constrained).
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass

DEFAULT_HALF_LIFE = 50  # requests: after 50 observations an old estimate weighs half
DEFAULT_MIN_SAMPLES = 3


@dataclass
class _Speed:
    ttft_s: float = 0.0
    tokens_per_s: float = 0.0
    ttft_samples: int = 0
    speed_samples: int = 0


class LatencyTracker:
    """Moving per-upstream estimates of time to first token (s) and decode speed (output tokens / s)."""

    def __init__(self, half_life: int = DEFAULT_HALF_LIFE, min_samples: int = DEFAULT_MIN_SAMPLES):
        if half_life < 1:
            raise ValueError(f"half_life must be ≥ 1 request, got {half_life}.")
        self.alpha = 1.0 - 0.5 ** (1.0 / half_life)
        self.min_samples = min_samples
        self._speeds: dict[str, _Speed] = {}
        self._lock = threading.Lock()

    def observe(self, model: str, ttft_s: float | None, output_tokens: int | None, total_s: float | None) -> None:
        """One answered request: its time to first byte, output tokens, and time from start to last byte."""
        with self._lock:
            speed = self._speeds.setdefault(model, _Speed())
            if ttft_s is not None and math.isfinite(ttft_s) and ttft_s >= 0:
                speed.ttft_s = self._mix(speed.ttft_s, ttft_s, speed.ttft_samples)
                speed.ttft_samples += 1
            if (output_tokens and output_tokens > 1 and total_s is not None and ttft_s is not None
                    and total_s - ttft_s > 0):
                # Decode speed: the tokens after the first, over the time after the first byte.
                rate = (output_tokens - 1) / (total_s - ttft_s)
                if math.isfinite(rate):
                    speed.tokens_per_s = self._mix(speed.tokens_per_s, rate, speed.speed_samples)
                    speed.speed_samples += 1

    def _mix(self, old: float, new: float, samples: int) -> float:
        # The first observations are averaged plainly, so one slow start does not linger.
        weight = max(self.alpha, 1.0 / (samples + 1))
        return old + weight * (new - old)

    def estimate(self, model: str) -> dict[str, float] | None:
        """`{"ttft_s", "tokens_per_s"}` of one upstream, or None until it has enough observations."""
        with self._lock:
            speed = self._speeds.get(model)
            if speed is None or min(speed.ttft_samples, speed.speed_samples) < self.min_samples or speed.tokens_per_s <= 0:
                return None
            return {"ttft_s": speed.ttft_s, "tokens_per_s": speed.tokens_per_s}

    def profile(self) -> dict[str, dict[str, float]]:
        """`{model: {"ttft_s", "tokens_per_s"}}` for the upstreams with enough observations."""
        with self._lock:
            models = list(self._speeds)
        return {model: speed for model in models if (speed := self.estimate(model)) is not None}
