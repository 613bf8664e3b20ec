"""What a node opens for a challenge, in memory and as the bytes a verdict points to.

The `open` RPC (protocol/messages.py) answers with an `openings` frame: the node's signed
receipt, the challenged block, the Merkle proof of that block's output, and two tensors:
the block's input rows for the whole session prefix and its output rows of the step.
The verifier keeps those exact frame bytes as the *openings blob*; the verdict's
`openings_hash` is the digest of that blob, so anyone holding the blob can check it is
the one the verdict judged and recompute the verdict (`corolla verifier recheck`).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

import msgpack
import torch

from protocol.hashing import digest
from protocol.messages import (
    Frame,
    WireError,
    WireTensor,
    encode_frame,
    expected_nbytes,
    tensor_from_wire,
    tensor_to_wire,
)
from protocol.receipts import SignedReceipt
from protocol.verdicts import NO_OPENINGS, OPENINGS_DOMAIN  # noqa: F401 - re-exported for verifier modules


@dataclass
class Openings:
    """A node's answer to one challenge (receipt id, block index)."""

    receipt: SignedReceipt
    block: int
    inputs: torch.Tensor  # [batch, prefix length, hidden]: block input for the whole prefix
    output: torch.Tensor  # [batch, new positions, hidden]: block output of the receipt's step
    proof: list[bytes]
    leaf_index: int
    num_leaves: int
    input_proof: list[bytes] | None = None  # Merkle proof of leaf block-1 (inner blocks), if sent
    leaves: list[bytes] | None = None  # all per-block output digests of the receipt, if sent
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def new_positions(self) -> int:
        return int(self.output.shape[1]) if self.output.dim() == 3 else 0

    def to_frame(self) -> Frame:
        meta: dict[str, Any] = {
            "receipt": self.receipt.to_bytes(),
            "block": self.block,
            "proof": list(self.proof),
            "leaf_index": self.leaf_index,
            "num_leaves": self.num_leaves,
        }
        if self.input_proof is not None:
            meta["input_proof"] = list(self.input_proof)
        if self.leaves is not None:
            meta["leaves"] = list(self.leaves)
        return Frame("openings", meta, [tensor_to_wire(self.inputs), tensor_to_wire(self.output)])

    @classmethod
    def from_frame(cls, frame: Frame) -> Openings:
        """Parse an `openings` frame; ValueError (never anything else) when malformed."""
        if frame.kind != "openings":
            raise ValueError(f"expected an openings frame, got {frame.kind!r}")
        try:
            meta = frame.meta
            if len(frame.tensors) != 2:
                raise ValueError(f"openings carry 2 tensors, got {len(frame.tensors)}")
            inputs, output = (tensor_from_wire(t).clone() for t in frame.tensors)
            input_proof, leaves = meta.get("input_proof"), meta.get("leaves")
            return cls(
                receipt=_signed_receipt(meta["receipt"]),
                block=int(meta["block"]),
                inputs=inputs,
                output=output,
                proof=[bytes(p) for p in meta.get("proof", [])],
                leaf_index=int(meta["leaf_index"]),
                num_leaves=int(meta["num_leaves"]),
                input_proof=None if input_proof is None else [bytes(p) for p in input_proof],
                leaves=None if leaves is None else [bytes(p) for p in leaves],
            )
        except (KeyError, TypeError, WireError, RuntimeError) as exc:
            raise ValueError(f"malformed openings: {exc!r}") from exc

    def to_bytes(self) -> bytes:
        """The openings blob: the frame bytes exactly as protocol/messages.py encodes them."""
        return b"".join(bytes(chunk) for chunk in encode_frame(self.to_frame()))

    @classmethod
    def from_bytes(cls, blob: bytes) -> Openings:
        """Inverse of to_bytes(), synchronous (callable inside or outside an event loop)."""
        try:
            (header_len,) = struct.unpack(">I", blob[:4])
            header = msgpack.unpackb(blob[4 : 4 + header_len], raw=False)
            offset, tensors, body = 4 + header_len, [], memoryview(bytearray(blob))
            for dtype, shape in header.get("tensors") or []:
                size = expected_nbytes(str(dtype), tuple(int(d) for d in shape))
                tensors.append(
                    WireTensor(str(dtype), tuple(int(d) for d in shape), body[offset : offset + size])
                )
                offset += size
            if offset != len(blob):
                raise ValueError("trailing or missing tensor bytes")
            frame = Frame(str(header["kind"]), dict(header.get("meta") or {}), tensors)
        except (struct.error, KeyError, TypeError, ValueError, WireError, msgpack.UnpackException) as exc:
            raise ValueError(f"malformed openings blob: {exc!r}") from exc
        return cls.from_frame(frame)


def _signed_receipt(value: Any) -> SignedReceipt:
    """The receipt in an openings frame: JSON form (protocol/messages.py) or compact bytes."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return SignedReceipt.from_bytes(bytes(value))
    return SignedReceipt.from_json(value)


def openings_hash(blob: bytes) -> bytes:
    """What a verdict's `openings_hash` commits to: the digest of the openings blob."""
    return digest(OPENINGS_DOMAIN + blob)
