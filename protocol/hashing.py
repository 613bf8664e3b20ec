"""The one hash function of Corolla's off-chain commitments, and raw tensor digests.

`HASH` is chosen by measurement (see protocol/README.md and benchmarks/receipts.py):
BLAKE3 hashes activations about twice as fast as SHA-256 on this class of machine.
Change it only here; every receipt id, tensor digest and block Merkle tree follows.
"""

from __future__ import annotations

import hashlib
import struct
from functools import lru_cache

import blake3

HASH = "blake3"
DIGEST_SIZE = 32
TENSOR_DOMAIN = b"COROLLA/tensor/v1"


def digest(data: bytes | bytearray | memoryview) -> bytes:
    """32-byte digest of `data` with the project hash."""
    if HASH == "blake3":
        return blake3.blake3(data).digest()
    return hashlib.sha256(data).digest()


@lru_cache(maxsize=4096)  # a node hashes tensors of the same few shapes at every step
def tensor_header(dtype: str, shape: tuple[int, ...]) -> bytes:
    """Canonical prefix that binds a tensor's dtype and shape into its digest."""
    name = dtype.encode("ascii")
    if len(name) > 255 or len(shape) > 255:
        raise ValueError("dtype name or rank too large for a tensor digest")
    return (
        TENSOR_DOMAIN
        + struct.pack(">B", len(name))
        + name
        + struct.pack(">B", len(shape))
        + b"".join(struct.pack(">I", d) for d in shape)
    )


def tensor_digest_raw(dtype: str, shape: tuple[int, ...], raw: bytes | bytearray | memoryview) -> bytes:
    """Digest of a tensor given as dtype name (e.g. "float32"), shape and C-order LE bytes."""
    if HASH == "blake3":
        h = blake3.blake3(tensor_header(dtype, shape))
        h.update(raw)
        return h.digest()
    hs = hashlib.sha256(tensor_header(dtype, shape))
    hs.update(raw)
    return hs.digest()
