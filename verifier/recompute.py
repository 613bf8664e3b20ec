"""Recompute one challenged block from the node's openings with our own weights.

Blocks are loaded one at a time (`BlockSpan.load(model, i, i + 1)`), checked against the
model manifest by the loader, and kept in a small LRU: a verifier of a 70-layer model
holds a few layers, not the model. The reference is always computed in float32 on the
verifier's device from the opened input, with the weights rounded to the dtype the node
announced (its opened output's dtype): a bfloat16 node holds bfloat16 weights, and that
rounding is the node's, not noise (verifier/precision.py relies on it).

A decode step opens a long prefix and a few new rows, and only the new rows are compared.
The prefix rows enter the new rows' output only through their attention keys and values,
so those are all we compute for them (norm + q/k/v projections + rotary, stopped at the
layer's cache write: `PrefixKV`); the whole block then runs on the new rows against that
prefix, as a node's cached step does, and the keys/values stay held for the session's
next checks (`PrefixCache`). That is an honest cached decoder's computation: it differs
from the whole block over the whole prefix by the float32 rounding that calibration
already counts as honest ("cached decoding vs full prefix"), and no more
(tests/verifier/test_recompute.py, every supported architecture). Architectures not in
`CHEAP_PREFIX_ARCHS`, or a layer that never writes its cache, get the whole-prefix
recompute.
"""

from __future__ import annotations

import time
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from protocol.tensor_hash import dtype_name
from verifier.tolerance import Thresholds, divergence

# Families whose layers write their keys/values through `cache.update(key, value, layer)`
# before attending (transformers 5.x), checked per family by tests/verifier/test_recompute.py.
CHEAP_PREFIX_ARCHS = frozenset({"llama", "mistral", "qwen2", "mixtral", "bloom", "falcon"})
# Prefix rows whose keys/values are not held yet run through the whole block with the new
# rows (one layer call) when there are few of them, instead of a separate key/value pass
# (a second call): a call has a fixed cost, ~0.35 ms on this CPU or ~25 MFLOP of block
# work at the ~70 GFLOP/s measured here (benchmarks/verifier.py). So a 128-wide block
# catches up to 64 rows in one call, a 4096-wide one only the minimum. Only the cost
# depends on this: both ways agree with the full recompute (tests/verifier/test_recompute.py).
CALL_OVERHEAD_FLOPS = 25e6
MIN_RIDE_ALONG_ROWS = 4


@dataclass(frozen=True)
class Comparison:
    """The recomputation's verdict on one block: measured divergence against the bound."""

    measured: float
    tolerance: float
    ok: bool
    compute_s: float
    reference: torch.Tensor | None = None  # the recomputed rows (for the precision test)


class BlockLoader:
    """Single blocks of one model on demand, least recently used evicted past `capacity`."""

    def __init__(
        self,
        model: str | Path,
        *,
        device: str = "cpu",
        capacity: int = 4,
        prefix_capacity: int = 16,
        cheap_prefix: bool = True,
    ):
        """`prefix_capacity`: sessions x blocks whose prefix keys/values are held
        (`PrefixCache`); `cheap_prefix=False` recomputes the whole block over every prefix
        (the reference before the cheap path existed, for benchmarks and comparisons)."""
        self.model = model
        self.cheap_prefix = cheap_prefix
        self.device = device
        self.capacity = max(1, capacity)
        self._blocks: OrderedDict[tuple[int, torch.dtype], Any] = OrderedDict()
        self.loads = 0
        self.prefixes = PrefixCache(prefix_capacity)

    def block(self, index: int, weights: torch.dtype = torch.float32) -> Any:
        """The float32 BlockSpan of block `index` (loaded and manifest-checked on first use),
        its parameters rounded to `weights` (the dtype a node announced) and back."""
        key = (index, weights)
        if key in self._blocks:
            self._blocks.move_to_end(key)
            return self._blocks[key]
        span = self.load(index, weights)
        self.loads += 1
        self._blocks[key] = span
        while len(self._blocks) > self.capacity:
            self._blocks.popitem(last=False)
        return span

    def load(self, index: int, weights: torch.dtype = torch.float32) -> Any:
        """A fresh float32 BlockSpan of block `index`, parameters rounded to `weights` and
        back, not held (`block` holds them; precision.py alters its own copies)."""
        from models.span import BlockSpan

        span = BlockSpan.load(self.model, index, index + 1, dtype=torch.float32, device=self.device)
        if weights != torch.float32:
            for param in span.layers.parameters():
                param.data = param.data.to(weights).to(torch.float32)
        return span

    @property
    def manifest_hash(self) -> bytes:
        from models.manifest_builder import load_manifest

        return load_manifest(self.model).manifest_hash()


class _Captured(Exception):
    """Raised by `PrefixKV` to stop a layer once it has written the prefix keys/values."""


class PrefixKV:
    """A one-layer stand-in for a `transformers` cache: the only method layers call is `update`.

    It starts with the keys/values of some first rows (or none) and appends what the layer
    writes. While `capturing`, it stops the layer right after the write (no attention, no
    MLP): that is how the prefix rows get their keys and values and nothing else. Then the
    layer runs on the new rows and `update` returns prefix + new keys/values, so the new
    rows attend to every position, as in a node's cached step.
    """

    def __init__(self, keys: torch.Tensor | None = None, values: torch.Tensor | None = None) -> None:
        self.keys, self.values = keys, values
        self.capturing = False

    def update(
        self, key: torch.Tensor, value: torch.Tensor, layer_idx: int, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.keys is not None and self.values is not None:
            key, value = torch.cat([self.keys, key], dim=-2), torch.cat([self.values, value], dim=-2)
        self.keys, self.values = key, value
        if self.capturing:
            raise _Captured
        return key, value

    @property
    def rows(self) -> int:
        return 0 if self.keys is None else int(self.keys.shape[-2])

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.rows


@dataclass
class _Held:
    inputs: torch.Tensor  # [B, rows, H] float32: the opened input rows these keys/values are of
    keys: torch.Tensor
    values: torch.Tensor
    outputs: torch.Tensor | None = None  # block outputs of rows [rows_from, rows), when computed at once
    rows_from: int = 0


class PrefixCache:
    """Keys/values of prefixes already recomputed, per (node, session, block), LRU.

    A decode session opens the same prefix again at every later step, one row longer each
    time; holding its keys/values means a session costs the verifier the prefix's
    projections once per block it checks, not once per check. An entry is reused only up
    to the rows where the new opening's input equals the stored one bit for bit (a row's
    key/value depends on that row and its position only), so a node cannot make the
    verifier reuse anything it did not compute from this very input.
    """

    def __init__(self, capacity: int = 16) -> None:
        self.capacity = capacity
        self._held: OrderedDict[bytes, _Held] = OrderedDict()
        self.hits = 0
        self.row_hits = 0  # checks answered from rows computed ahead (`extend_session_rows`)

    def start(self, key: bytes | None, inputs: torch.Tensor, prefix: int) -> PrefixKV:
        """The stored keys/values of the longest usable first rows of `inputs[:, :prefix]`."""
        held = self._held.get(key) if key is not None else None
        if held is None or held.inputs.shape[0] != inputs.shape[0]:
            return PrefixKV()
        rows = min(int(held.inputs.shape[1]), prefix)
        if rows == 0 or not torch.equal(held.inputs[:, :rows], inputs[:, :rows]):
            return PrefixKV()
        self._held.move_to_end(key)  # type: ignore[arg-type]
        self.hits += 1
        return PrefixKV(held.keys[..., :rows, :], held.values[..., :rows, :])

    def rows(self, key: bytes | None, inputs: torch.Tensor, new: int) -> torch.Tensor | None:
        """The block's last `new` rows over `inputs`, if computed ahead from an opening whose
        first rows equal `inputs` bit for bit (causal: rows after them change nothing)."""
        held = self._held.get(key) if key is not None else None
        length = int(inputs.shape[1])
        if held is None or held.outputs is None or held.inputs.shape[0] != inputs.shape[0]:
            return None
        if length - new < held.rows_from or length > held.inputs.shape[1]:
            return None
        if not torch.equal(held.inputs[:, :length], inputs):
            return None
        self.row_hits += 1
        return held.outputs[:, length - new - held.rows_from : length - held.rows_from]

    def keep(
        self,
        key: bytes | None,
        inputs: torch.Tensor,
        kv: PrefixKV,
        *,
        outputs: torch.Tensor | None = None,
        rows_from: int = 0,
    ) -> None:
        if key is None or self.capacity <= 0 or kv.keys is None or kv.values is None:
            return
        if kv.rows != inputs.shape[1]:
            return
        self._held[key] = _Held(inputs.clone(), kv.keys, kv.values, outputs, rows_from)
        self._held.move_to_end(key)
        while len(self._held) > self.capacity:
            self._held.popitem(last=False)


def full_prefix_rows(span: Any, index: int, inputs: torch.Tensor, new: int) -> torch.Tensor:
    """Block `index` over all of `inputs` [B, L, H] (no cache); its last `new` rows."""
    return span.block_forward(index, inputs)[:, -new:]


def ride_along_rows(span: Any) -> int:
    """How many not-yet-held prefix rows go through the whole block with the new rows."""
    flops = float(getattr(span.manifest, "block_flops_per_token", 0) or 0)
    return max(MIN_RIDE_ALONG_ROWS, int(CALL_OVERHEAD_FLOPS / flops) if flops > 0 else 0)


def cached_prefix_rows(
    span: Any,
    index: int,
    inputs: torch.Tensor,
    new: int,
    kv: PrefixKV | None = None,
    *,
    ride_along: int | None = None,
) -> torch.Tensor | None:
    """The last `new` rows of block `index`, the prefix computed only as far as its keys and
    values (module docstring), after the first `kv.rows` rows whose keys/values `kv` holds
    already; None when this layer does not write them through its cache. Up to
    `ride_along` (default `ride_along_rows(span)`) prefix rows not held run through the
    whole block with the new rows instead of a key/value pass of their own."""
    kv = kv or PrefixKV()
    ride_along = ride_along_rows(span) if ride_along is None else ride_along
    prefix = int(inputs.shape[1]) - new
    arch, layer = span.arch, span.layers[index - span.start]
    window = arch.sliding_window(index)
    positions = _position_module(span)
    if prefix - kv.rows > ride_along:
        done, head = kv.rows, inputs[:, kv.rows : prefix]
        kv.capturing = True
        try:
            arch.call_layer(layer, head, arch.layer_inputs(positions, head, done, {window}), window, kv)
        except _Captured:
            pass
        kv.capturing = False
        if kv.rows != prefix:
            return None
    past, tail = kv.rows, inputs[:, kv.rows :]  # prefix rows not held (if any) ride along
    out = arch.call_layer(layer, tail, arch.layer_inputs(positions, tail, past, {window}), window, kv)
    return out[:, -new:] if kv.rows == inputs.shape[1] else None


_POSITIONS: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()


def _position_module(span: Any) -> Any:
    """The span's rotary module (None for ALiBi families), built once per loaded span."""
    if span not in _POSITIONS:
        _POSITIONS[span] = span.arch.new_position_module(span.device)
    return _POSITIONS[span]


def reference_rows(
    span: Any,
    index: int,
    inputs: torch.Tensor,
    new: int,
    *,
    prefixes: PrefixCache | None = None,
    session: bytes | None = None,
    cheap: bool = True,
) -> torch.Tensor:
    """What the verifier compares against: block `index`'s last `new` rows over the prefix
    `inputs` [B, L, H] (float32 on the span's device), cheaply when the family allows;
    with `prefixes` and a `session` key, reusing keys/values of earlier checks (a session's
    first step, with no prefix, also goes the cached way so its keys/values are kept)."""
    with torch.no_grad():
        cheap = cheap and span.arch.name in CHEAP_PREFIX_ARCHS
        if cheap and (new < inputs.shape[1] or session is not None):
            key = None if session is None else session + index.to_bytes(4, "big")
            ahead = prefixes.rows(key, inputs, new) if prefixes is not None else None
            if ahead is not None:
                return ahead
            prefix = int(inputs.shape[1]) - new
            kv = prefixes.start(key, inputs, prefix) if prefixes is not None else PrefixKV()
            out = cached_prefix_rows(span, index, inputs, new, kv)
            if out is not None:
                if prefixes is not None:
                    prefixes.keep(key, inputs, kv)
                return out
        return full_prefix_rows(span, index, inputs, new)


def extend_session_rows(
    loader: BlockLoader, index: int, inputs: torch.Tensor, first: int, checks: int, *, session: bytes
) -> bool:
    """Compute block `index` for rows `first`.. of one opening's `inputs` [B, L, H] in one
    layer call and hold them with the session's keys/values, so that `checks` checks of
    the session's sampled steps (whose new rows lie in first..L) read their rows instead
    of calling the layer once each. Done only where the rows between the checked ones
    cost less than the calls saved (`CALL_OVERHEAD_FLOPS`: narrow blocks); returns
    whether it was done. Float32 weights only (a node announcing float32)."""
    span = loader.block(index)
    if checks < 2 or not loader.cheap_prefix or span.arch.name not in CHEAP_PREFIX_ARCHS:
        return False
    tail = int(inputs.shape[1]) - first
    flops = float(getattr(span.manifest, "block_flops_per_token", 0) or 0)
    if tail < checks or (tail - checks) * flops > (checks - 1) * CALL_OVERHEAD_FLOPS:
        return False
    x = inputs.to(device=span.device, dtype=torch.float32)
    key = session + index.to_bytes(4, "big")
    with torch.no_grad():
        kv = loader.prefixes.start(key, x, first)
        out = cached_prefix_rows(span, index, x, tail, kv)
    if out is None:
        return False
    loader.prefixes.keep(key, x, kv, outputs=out, rows_from=first)
    return True


def recompute(
    loader: BlockLoader,
    index: int,
    inputs: torch.Tensor,
    new: int,
    *,
    session: bytes | None = None,
    weights: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Block `index` over the opened prefix input [B, L, H]; its last `new` rows, float32.

    `session` (e.g. node key + session id) lets the loader's `PrefixCache` reuse the keys
    and values of this session's prefix from earlier checks of the same block. `weights`:
    the dtype the block's parameters are rounded to (`BlockLoader.block`)."""
    if session is not None and weights != torch.float32:
        session = session + b"/" + dtype_name(weights).encode()  # keys/values differ per weights
    return span_rows(loader, loader.block(index, weights), index, inputs, new, session=session)


def span_rows(
    loader: BlockLoader, span: Any, index: int, inputs: torch.Tensor, new: int, *, session: bytes | None
) -> torch.Tensor:
    """`reference_rows` of `span` (block `index`) with the loader's prefix cache and settings,
    from the opened `inputs` in any dtype; float32 on the CPU."""
    x = inputs.to(device=span.device, dtype=torch.float32)
    out = reference_rows(
        span, index, x, new, prefixes=loader.prefixes, session=session, cheap=loader.cheap_prefix
    )
    return out.to("cpu")


def compare_block(
    loader: BlockLoader,
    thresholds: Thresholds,
    index: int,
    inputs: torch.Tensor,
    output: torch.Tensor,
    *,
    device_class: str | None = None,
    session: bytes | None = None,
) -> Comparison:
    """Recompute block `index` from `inputs` and score the node's `output` rows against it.

    The bound is the one calibrated for the dtype the node computed in (the dtype of its
    opened output) and the device class it announced (None: the loosest known); the
    reference uses the weights rounded to that dtype. `session` names the decode session
    the opening belongs to (see `recompute`).
    """
    started = time.perf_counter()
    new = int(output.shape[1])
    reference = recompute(
        loader, index, inputs, new, session=session, weights=announced_weights(output.dtype)
    )
    measured = divergence(output, reference, inputs[:, -new:].float())
    tolerance = thresholds.lookup(dtype_name(output.dtype), device_class).threshold
    return Comparison(
        measured=measured,
        tolerance=tolerance,
        ok=measured <= tolerance,
        compute_s=time.perf_counter() - started,
        reference=reference,
    )


def announced_weights(dtype: torch.dtype) -> torch.dtype:
    """The weights dtype of a node whose block output is in `dtype` (float32 unless lower)."""
    return dtype if dtype in (torch.bfloat16, torch.float16) else torch.float32
