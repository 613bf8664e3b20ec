"""Canonical digest of a torch tensor (the only torch module in protocol/).

Hashes dtype, shape and the C-contiguous little-endian bytes (see protocol/README.md),
reading the tensor's memory in place when it is already contiguous on the CPU.
"""

from __future__ import annotations

import sys

import torch

from protocol.hashing import tensor_digest_raw

assert sys.byteorder == "little", "tensor digests are defined over little-endian bytes"


def dtype_name(dtype: torch.dtype) -> str:
    """`torch.float32` -> "float32"."""
    return str(dtype).removeprefix("torch.")


def tensor_bytes(t: torch.Tensor) -> memoryview:
    """Raw C-order bytes of `t` without copying when it is contiguous on the CPU.

    Goes through numpy (a few µs) rather than `Tensor.view(torch.uint8)`, which costs
    several times more per call on small per-token activations.
    """
    if t.requires_grad:
        t = t.detach()
    if not t.is_cpu:
        t = t.cpu()
    if not t.is_contiguous():
        t = t.contiguous()
    if t.numel() == 0:
        return memoryview(b"")
    if t.dtype == torch.bfloat16:
        t = t.view(torch.int16)  # numpy has no bfloat16; same bytes
    try:
        array = t.numpy()
    except TypeError:  # dtypes numpy lacks (float8, ...): reinterpret the bytes in torch
        array = t.reshape(-1).view(torch.uint8).numpy()
    return memoryview(array).cast("B")  # type: ignore[arg-type]


def tensor_digest(t: torch.Tensor) -> bytes:
    """32-byte digest binding dtype, shape and contents of `t`."""
    return tensor_digest_raw(dtype_name(t.dtype), tuple(t.shape), tensor_bytes(t))
