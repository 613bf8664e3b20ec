"""Attention cache of one span: preallocated keys and values for each of its layers.

Preallocating up to `max_length` makes the memory a session costs known before it starts
(admission control) and constant while it runs. The decoder layers of `transformers` only
call `update(key, value, layer_idx)` on their cache, so this small class stands in for a
`transformers` Cache: it writes the new positions after the filled prefix and returns the
keys and values of all positions so far.
"""

from __future__ import annotations

from typing import Any

import torch


def cache_nbytes(
    layers: int, batch: int, max_length: int, kv_heads: int, head_dim: int, dtype: torch.dtype
) -> int:
    """Bytes of keys and values for `layers` layers of `batch` sequences of `max_length`."""
    element = torch.empty((), dtype=dtype).element_size()
    return 2 * layers * batch * kv_heads * max_length * head_dim * element


class SpanCache:
    """Keys/values for layers [start, end) of one batch of sequences, up to max_length positions."""

    def __init__(
        self,
        start: int,
        end: int,
        batch: int,
        max_length: int,
        kv_heads: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        if batch <= 0 or max_length <= 0:
            raise ValueError("cache batch and max_length must be positive")
        self.start, self.end = start, end
        self.batch, self.max_length = batch, max_length
        self.length = 0  # positions filled
        shape = (end - start, batch, kv_heads, max_length, head_dim)
        self.keys = torch.zeros(shape, dtype=dtype, device=device)
        self.values = torch.zeros(shape, dtype=dtype, device=device)
        self._pending = 0  # positions being written by the step in progress

    @property
    def nbytes(self) -> int:
        return self.keys.nbytes + self.values.nbytes

    def begin_step(self, new_positions: int) -> None:
        if self.length + new_positions > self.max_length:
            raise ValueError(
                f"session would exceed its max_length: {self.length} positions cached + "
                f"{new_positions} new > {self.max_length}"
            )
        self._pending = new_positions

    def commit_step(self) -> None:
        self.length += self._pending
        self._pending = 0

    def rewind(self, length: int) -> None:
        """Forget positions >= length, e.g. to redo a step whose reply was lost."""
        if not 0 <= length <= self.length:
            raise ValueError(f"cannot rewind a cache of {self.length} positions to {length}")
        self.length = length

    def update(
        self, key: torch.Tensor, value: torch.Tensor, layer_idx: int, cache_kwargs: Any = None,
        **kwargs: Any,  # transformers >= 5.2x passes the layer's kwargs too
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Called by a layer: store its new keys/values [B, H, T, D], return all so far."""
        local = layer_idx - self.start
        new = key.shape[-2]
        if new != self._pending or not 0 <= local < self.end - self.start:
            raise RuntimeError("SpanCache.update called outside a step of this span")
        stop = self.length + new
        self.keys[local, :, :, self.length : stop] = key
        self.values[local, :, :, self.length : stop] = value
        return self.keys[local, :, :, :stop], self.values[local, :, :, :stop]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.length
