"""A span's forward and inference step one block at a time, so compute can be preempted.

`forward_blocks(span, hidden)` and `step_blocks(span, hidden, cache)` compute exactly what
`BlockSpan.forward` and `BlockSpan.step` compute (the same layer calls on the same inputs
in the same order, so the outputs are bit-identical), but as generators that yield each
block's output as soon as it is computed. Between two blocks the node's task pool
(node/task_pool.py) may run a more urgent task, then resume this one where it stopped.

Each block runs under inference mode entered and left around that block alone: grad mode
is thread-local, and whatever the compute thread runs between two of our blocks must not
inherit it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch


def forward_blocks(span: Any, hidden: torch.Tensor) -> Iterator[torch.Tensor]:
    """Causal forward of positions 0..T-1 of hidden [B, T, H], one block per item."""
    return _blocks(span, hidden, None)


def step_blocks(span: Any, hidden: torch.Tensor, cache: Any) -> Iterator[torch.Tensor]:
    """Positions cache.length .. cache.length+T-1, one block per item; the cache counts the
    new positions once the last block has run (as `BlockSpan.step` does)."""
    if hidden.shape[0] != cache.batch:
        raise ValueError(f"batch {hidden.shape[0]} does not match the cache's batch {cache.batch}")
    if (cache.start, cache.end) != (span.start, span.end):
        raise ValueError("cache belongs to another span")
    cache.begin_step(hidden.shape[1])  # raises, cache unchanged, if they do not fit
    return _committing(_blocks(span, hidden, cache), cache)


def _committing(blocks: Iterator[torch.Tensor], cache: Any) -> Iterator[torch.Tensor]:
    yield from blocks
    cache.commit_step()


def _blocks(span: Any, hidden: torch.Tensor, cache: Any) -> Iterator[torch.Tensor]:
    """BlockSpan.iter_blocks (no padding), each block in inference mode."""
    blocks = span.iter_blocks(hidden, cache)
    while True:
        with torch.inference_mode():
            output = next(blocks, None)
        if output is None:
            return
        yield output
