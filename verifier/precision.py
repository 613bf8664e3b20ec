"""Catch a node whose block output carries the error of int8 weights it did not announce.

The divergence bound (tolerance.py) cannot tell int8 weights from honest bfloat16 or
float16 rounding: int8's error (~0.01 of the block's update) sits inside the spread of
honest bf16 kernels (0 - 0.02, verifier/README.md). What it can tell is the *direction*:
int8 weights change a block's output by a specific vector, the same for every node that
quantizes those weights the usual way (per output channel, absmax / 127: bitsandbytes
`Linear8bitLt`, torchao's int8 weight-only). The verifier computes that vector itself —
the block once more in float32 with its Linear weights round-tripped through int8 — and
measures how much of it the node's output carries:

    e = claimed - reference,  d = simulated - reference   (all compared rows, flattened)
    share = <e, d> / |d|^2              how much of int8's error the output carries
    z     = <e, d> / (|d| sigma)        the same in units of the output's own noise, where
                                        sigma = rms of e with its d-component removed

A node with int8 weights scores share ~1; an honest node's rounding is unrelated to that
direction and scores ~0, with a spread that shrinks as 1/sqrt(rows x hidden). A check
fails when share > 0.5 — the output is closer to the int8 simulation than to the
reference, the likelihood-ratio test between the two under isotropic noise — *and*
z > 5, so that a narrow check (one row of a small model, |d| only a few sigma) cannot
fail an honest node on noise alone. Both bounds are stored per class by
`corolla verifier calibrate` (thresholds.json: precision_bound, precision_min_z).

Both references use the weights rounded to the announced dtype (`recompute.announced_weights`):
bf16 weight rounding is shared by every honest bf16 node and correlates with int8
rounding of the same weights, so a float32-weights reference would bias honest shares
upwards (+0.07 measured).
"""

from __future__ import annotations

import math
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from protocol.hashing import digest
from verifier.recompute import BlockLoader, announced_weights, recompute, span_rows

METRIC = (
    "share = <claimed - ref, int8 - ref> / |int8 - ref|^2 and its z in noise units; "
    "fail when share > precision_bound and z > precision_min_z"
)
SIMULATED = "int8 per output channel, absmax / 127"
# Positions per sequence the test reruns on a long call (a forward receipt): 8 rows of
# every sequence already give int8 a z far above the bound (verifier/README.md), and the
# simulation then costs the window's rows plus the prefix's keys/values, not a second
# whole block.
WINDOW_ROWS = 8


def int8_round_trip(weight: torch.Tensor) -> torch.Tensor:
    """`weight` [out, in] quantized to int8 per output row (absmax / 127) and dequantized."""
    w = weight.to(torch.float32)
    scale = w.abs().amax(dim=1, keepdim=True)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # an all-zero row stays zero
    return torch.round(w * (127.0 / scale)) * (scale / 127.0)


def quantize_linears_int8(module: nn.Module) -> nn.Module:
    """In place: every nn.Linear weight of `module` replaced by its int8 round trip."""
    for child in module.modules():
        if isinstance(child, nn.Linear):
            child.weight.data = int8_round_trip(child.weight.data).to(child.weight.dtype)
    return module


@dataclass(frozen=True)
class PrecisionScore:
    """How much of int8's error a claimed output carries (module docstring)."""

    share: float  # least-squares coefficient of d in e
    z: float  # <e, d> / (|d| sigma): the share's significance
    snr: float  # |d| / sigma: how many noise units int8's whole error spans in this check

    def fails(self, bound: float, min_z: float) -> bool:
        return self.share > bound and self.z > min_z


def int8_score(claimed: torch.Tensor, reference: torch.Tensor, simulated: torch.Tensor) -> PrecisionScore:
    """Score `claimed - reference` against `simulated - reference` over all rows, in float64.

    A simulation that does not move the output scores 0 (nothing to test); a non-finite
    claim scores inf (the divergence bound fails it first anyway).
    """
    c, r, s = (t.detach().to("cpu", torch.float64).flatten() for t in (claimed, reference, simulated))
    if not bool(torch.isfinite(c).all()):
        return PrecisionScore(float("inf"), float("inf"), 0.0)
    e, d = c - r, s - r
    norm2 = float(d @ d)
    if norm2 == 0.0:
        return PrecisionScore(0.0, 0.0, 0.0)
    dot = float(e @ d)
    share = dot / norm2
    sigma = float((e - share * d).norm()) / max(e.numel() - 1, 1) ** 0.5
    if sigma == 0.0:
        z = 0.0 if dot == 0.0 else math.copysign(float("inf"), dot)
        return PrecisionScore(share, z, float("inf"))
    return PrecisionScore(share, dot / (norm2**0.5 * sigma), norm2**0.5 / sigma)


_SIMULATED: weakref.WeakKeyDictionary[BlockLoader, OrderedDict[tuple[int, torch.dtype], Any]] = (
    weakref.WeakKeyDictionary()
)


def simulated_block(loader: BlockLoader, index: int, weights: torch.dtype) -> Any:
    """Block `index` with its announced-dtype weights round-tripped through int8 (float32
    compute), held next to `loader`'s blocks with the same capacity."""
    held = _SIMULATED.setdefault(loader, OrderedDict())
    key = (index, weights)
    if key in held:
        held.move_to_end(key)
        return held[key]
    span = loader.load(index, weights)
    for layer in span.layers:
        quantize_linears_int8(layer)
    held[key] = span
    while len(held) > loader.capacity:
        held.popitem(last=False)
    return span


def simulate_int8(
    loader: BlockLoader,
    index: int,
    inputs: torch.Tensor,
    new: int,
    weights: torch.dtype,
    *,
    session: bytes | None = None,
) -> torch.Tensor:
    """The last `new` rows of block `index` as a node with int8 weights would compute them
    (float32, `weights`-dtype weights round-tripped through int8)."""
    key = None if session is None else session + b"/int8-" + str(weights).encode()
    return span_rows(loader, simulated_block(loader, index, weights), index, inputs, new, session=key)


def lower_precision_score(
    loader: BlockLoader,
    index: int,
    inputs: torch.Tensor,
    output: torch.Tensor,
    reference: torch.Tensor | None = None,
    *,
    session: bytes | None = None,
    seed: bytes | None = None,
) -> PrecisionScore:
    """`int8_score` of the node's opened `output` rows; `reference` is the recomputation
    with the announced weights (`recompute.compare_block` returns it), recomputed if None.

    With a `seed` (the verdict's evidence) a long sessionless call is scored on a window
    of `WINDOW_ROWS` positions (`row_window`) instead of all of them."""
    new = int(output.shape[1])
    if seed is not None and session is None and new > WINDOW_ROWS:
        start, end = row_window(new, seed)
        prefix = int(inputs.shape[1]) - new
        inputs, output = inputs[:, : prefix + end], output[:, start:end]
        reference = None if reference is None else reference[:, start:end]
        new = end - start
    weights = announced_weights(output.dtype)
    if reference is None:
        reference = recompute(loader, index, inputs, new, session=session, weights=weights)
    simulated = simulate_int8(loader, index, inputs, new, weights, session=session)
    return int8_score(output, reference, simulated)


def row_window(new: int, seed: bytes) -> tuple[int, int]:
    """The `WINDOW_ROWS` consecutive positions of `new` the test scores, drawn from the
    verdict's evidence: anyone rechecking the verdict draws the same window, and a node
    could steer it only by grinding outputs, each try costing an honest window's compute."""
    draw = int.from_bytes(digest(b"COROLLA/precision-window/v1" + seed)[:8], "big")
    end = WINDOW_ROWS + draw % (new - WINDOW_ROWS + 1)
    return end - WINDOW_ROWS, end
