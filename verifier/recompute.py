"""Recompute one challenged block from the node's openings with our own weights.

Blocks are loaded one at a time (`BlockSpan.load(model, i, i + 1)`), checked against the
model manifest by the loader, and kept in a small LRU: a verifier of a 70-layer model
holds a few layers, not the model. The reference is always float32 on the verifier's
device over the whole prefix (no cache), whatever dtype the node computed in.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from protocol.tensor_hash import dtype_name
from verifier.tolerance import Thresholds, divergence


@dataclass(frozen=True)
class Comparison:
    """The recomputation's verdict on one block: measured divergence against the bound."""

    measured: float
    tolerance: float
    ok: bool
    compute_s: float


class BlockLoader:
    """Single blocks of one model on demand, least recently used evicted past `capacity`."""

    def __init__(self, model: str | Path, *, device: str = "cpu", capacity: int = 4):
        self.model = model
        self.device = device
        self.capacity = max(1, capacity)
        self._blocks: OrderedDict[int, Any] = OrderedDict()
        self.loads = 0

    def block(self, index: int) -> Any:
        """The float32 BlockSpan of block `index` (loaded and manifest-checked on first use)."""
        if index in self._blocks:
            self._blocks.move_to_end(index)
            return self._blocks[index]
        from models.span import BlockSpan

        span = BlockSpan.load(self.model, index, index + 1, dtype=torch.float32, device=self.device)
        self.loads += 1
        self._blocks[index] = span
        while len(self._blocks) > self.capacity:
            self._blocks.popitem(last=False)
        return span

    @property
    def manifest_hash(self) -> bytes:
        from models.manifest_builder import load_manifest

        return load_manifest(self.model).manifest_hash()


def recompute(loader: BlockLoader, index: int, inputs: torch.Tensor, new: int) -> torch.Tensor:
    """Block `index` over the opened prefix input [B, L, H]; its last `new` rows, float32."""
    span = loader.block(index)
    with torch.no_grad():
        out = span.block_forward(index, inputs.to(device=span.device, dtype=torch.float32))
    return out[:, -new:].to("cpu")


def compare_block(
    loader: BlockLoader,
    thresholds: Thresholds,
    index: int,
    inputs: torch.Tensor,
    output: torch.Tensor,
    *,
    device_class: str | None = None,
) -> Comparison:
    """Recompute block `index` from `inputs` and score the node's `output` rows against it.

    The bound is the one calibrated for the dtype the node computed in (the dtype of its
    opened output) and the device class it announced (None: the loosest known).
    """
    started = time.perf_counter()
    new = int(output.shape[1])
    reference = recompute(loader, index, inputs, new)
    measured = divergence(output, reference, inputs[:, -new:].float())
    tolerance = thresholds.lookup(dtype_name(output.dtype), device_class).threshold
    return Comparison(
        measured=measured,
        tolerance=tolerance,
        ok=measured <= tolerance,
        compute_s=time.perf_counter() - started,
    )
