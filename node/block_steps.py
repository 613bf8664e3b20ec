"""A span's forward and inference step one block at a time, so compute can be preempted.

`forward_blocks(span, hidden)` and `step_blocks(span, hidden, cache)` are
`BlockSpan.iter_blocks` and `BlockSpan.iter_step` (the same code `forward` and `step` run,
so the outputs are bit-identical) with each block computed in inference mode. Between two
blocks the node's task pool (node/task_pool.py) may run a more urgent task, then resume
this one where it stopped.

Inference mode is entered and left around each block alone: grad mode is thread-local,
and whatever the compute thread runs between two of our blocks must not inherit it.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from models.span import BlockSpan
from models.span_cache import SpanCache


def forward_blocks(span: BlockSpan, hidden: torch.Tensor) -> Iterator[torch.Tensor]:
    """Causal forward of positions 0..T-1 of hidden [B, T, H], one block per item."""
    return _in_inference_mode(span.iter_blocks(hidden, None))


def step_blocks(span: BlockSpan, hidden: torch.Tensor, cache: SpanCache) -> Iterator[torch.Tensor]:
    """Positions cache.length .. cache.length+T-1, one block per item; the cache counts the
    new positions once the last block has run (as `BlockSpan.step` does)."""
    return _in_inference_mode(span.iter_step(hidden, cache))


def _in_inference_mode(blocks: Iterator[torch.Tensor]) -> Iterator[torch.Tensor]:
    while True:
        with torch.inference_mode():
            output = next(blocks, None)
        if output is None:
            return
        yield output
