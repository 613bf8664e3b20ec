"""Measure what a node announces: inference steps/s of its span and batched forward tokens/s.

Measured once at start-up on the real span (dtype, device, threads), so routing compares
nodes by what they actually do, not by what they claim to be.
"""

from __future__ import annotations

import time
from typing import Any

import torch


def measure_throughput(span: Any, *, steps: int = 8, forward_tokens: int = 128) -> tuple[float, float]:
    """(single-token inference steps per second, forward tokens per second)."""
    with torch.inference_mode():
        hidden = torch.randn(1, 1, span.hidden_size, dtype=span.dtype, device=span.device)
        cache = span.new_cache(1, steps + 2)
        span.step(hidden, cache)  # warm-up
        started = time.perf_counter()
        for _ in range(steps):
            span.step(hidden, cache)
        step_rate = steps / max(time.perf_counter() - started, 1e-9)
        batch = torch.randn(1, forward_tokens, span.hidden_size, dtype=span.dtype, device=span.device)
        span.forward(batch)
        started = time.perf_counter()
        span.forward(batch)
        forward_rate = forward_tokens / max(time.perf_counter() - started, 1e-9)
    return step_rate, forward_rate
