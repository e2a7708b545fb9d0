"""The gateway's moving estimate of each upstream's speed."""

import pytest

from carrot_hub.serving.latency import LatencyTracker


def test_profile_needs_enough_observations_then_tracks_the_speed():
    tracker = LatencyTracker(half_life=10, min_samples=3)
    tracker.observe("fast", ttft_s=0.1, output_tokens=101, total_s=1.1)  # 100 tokens in 1 s
    tracker.observe("fast", ttft_s=0.1, output_tokens=101, total_s=1.1)
    assert tracker.profile() == {}
    tracker.observe("fast", ttft_s=0.1, output_tokens=101, total_s=1.1)
    profile = tracker.profile()["fast"]
    assert profile["ttft_s"] == pytest.approx(0.1) and profile["tokens_per_s"] == pytest.approx(100.0)


def test_estimate_moves_towards_a_new_speed():
    tracker = LatencyTracker(half_life=5, min_samples=1)
    for _ in range(20):
        tracker.observe("m", ttft_s=0.2, output_tokens=51, total_s=0.7)  # 100 tokens/s
    for _ in range(30):
        tracker.observe("m", ttft_s=0.2, output_tokens=51, total_s=5.2)  # 10 tokens/s
    assert tracker.profile()["m"]["tokens_per_s"] < 12


def test_unusable_observations_are_ignored():
    tracker = LatencyTracker(min_samples=1)
    tracker.observe("m", ttft_s=float("nan"), output_tokens=None, total_s=None)
    tracker.observe("m", ttft_s=0.5, output_tokens=1, total_s=0.5)  # one token: no decode speed
    assert tracker.profile() == {}
