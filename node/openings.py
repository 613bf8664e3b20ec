"""What a node keeps so it can answer challenges, and the `open` RPC's answer.

For every receipt the node retains, for a bounded window (bytes and age), the exact
tensors behind its commitments: the span input rows of each step and each block's output
rows. A challenge `(receipt id, block)` is answered with that block's input rows for the
whole prefix (positions 0..end of the receipt's step), its output rows for the step, and
the Merkle proof of the output's leaf under the receipt's blocks root. Keeping the real
tensors (not recomputing them) guarantees the openings hash to what was signed.

They are kept as the exact bytes that were hashed (`RawTensor`: dtype, shape, C-order
bytes, read once for the leaf digest and copied from the same view), not as torch
tensors: a bytes object is one flat allocation the garbage collector never walks, and the
compute thread's tensors are not pinned for the retention window. (On the receipts
benchmark the difference in node CPU was within its noise; the copy costs ~1 µs a token.)
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field

import torch

from protocol.hashing import tensor_digest_raw
from protocol.merkle import block_proof
from protocol.messages import ErrorCode, Frame, error_frame, tensor_to_wire
from protocol.receipts import SignedReceipt
from protocol.tensor_hash import dtype_name, tensor_bytes

DEFAULT_RETENTION_BYTES = 512 << 20
DEFAULT_RETENTION_S = 3600.0


@dataclass(slots=True)
class RawTensor:
    """A tensor as the bytes its digest covers (protocol/tensor_hash.py)."""

    dtype: torch.dtype
    shape: tuple[int, ...]
    data: bytes

    @classmethod
    def of(cls, t: torch.Tensor) -> RawTensor:
        return cls(t.dtype, tuple(t.shape), bytes(tensor_bytes(t)))

    def digest(self) -> bytes:
        return tensor_digest_raw(dtype_name(self.dtype), self.shape, self.data)

    def tensor(self) -> torch.Tensor:
        if not self.data:
            return torch.empty(self.shape, dtype=self.dtype)
        return torch.frombuffer(bytearray(self.data), dtype=self.dtype).reshape(self.shape)


def raw_with_digest(t: torch.Tensor) -> tuple[RawTensor, bytes]:
    """`t`'s bytes, copied once, and its tensor digest, from the same bytes."""
    view = tensor_bytes(t)
    shape = tuple(t.shape)
    return RawTensor(t.dtype, shape, bytes(view)), tensor_digest_raw(dtype_name(t.dtype), shape, view)


@dataclass(slots=True)
class StepRecord:
    hidden: RawTensor  # span input rows of this step
    per_block: list[RawTensor]  # each block's output rows of this step
    leaves: list[bytes]  # tensor digests of per_block (the Merkle leaves)

    @property
    def nbytes(self) -> int:
        return len(self.hidden.data) + sum(len(t.data) for t in self.per_block)


@dataclass
class SessionRecord:
    steps: list[StepRecord] = field(default_factory=list)


@dataclass
class Retained:
    signed: SignedReceipt
    record: SessionRecord
    step_index: int
    added: float
    nbytes: int


class RetentionStore:
    """Receipt id -> retained tensors, evicting the oldest past max_bytes or max_age_s."""

    def __init__(self, max_bytes: int = DEFAULT_RETENTION_BYTES, max_age_s: float = DEFAULT_RETENTION_S):
        self.max_bytes, self.max_age_s = max_bytes, max_age_s
        self._entries: OrderedDict[bytes, Retained] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def add(self, signed: SignedReceipt, record: SessionRecord, step_index: int) -> None:
        nbytes = record.steps[step_index].nbytes
        with self._lock:
            self._entries[signed.id] = Retained(signed, record, step_index, time.monotonic(), nbytes)
            self._bytes += nbytes
            self._evict()

    def _evict(self) -> None:
        now = time.monotonic()
        while self._entries:
            oldest = next(iter(self._entries.values()))
            if self._bytes <= self.max_bytes and now - oldest.added <= self.max_age_s:
                break
            _, gone = self._entries.popitem(last=False)
            self._bytes -= gone.nbytes

    def signed(self, receipt_id: bytes) -> SignedReceipt | None:
        with self._lock:
            entry = self._entries.get(receipt_id)
        return entry.signed if entry is not None else None

    def get(self, receipt_id: bytes) -> Retained | None:
        with self._lock:
            self._evict()
            return self._entries.get(receipt_id)

    def openings_frame(self, request: Frame) -> Frame:
        """Answer an `open` frame: openings of one block of one receipt, or an error frame."""
        if request.kind != "open":  # built by protocol.messages.open_request
            return error_frame(ErrorCode.BAD_REQUEST, f"expected an 'open' frame, got {request.kind!r}")
        try:
            receipt_id, block = bytes(request.meta["receipt_id"]), int(request.meta["block"])
        except (KeyError, TypeError, ValueError):
            return error_frame(ErrorCode.BAD_REQUEST, "open needs receipt_id (32 bytes) and block (int)")
        entry = self.get(receipt_id)
        if entry is None:
            return error_frame(ErrorCode.NOT_FOUND,
                               f"receipt {receipt_id.hex()[:16]}… is unknown here or past the retention window")
        receipt = entry.signed.receipt
        if not receipt.block_start <= block < receipt.block_end:
            return error_frame(ErrorCode.BAD_REQUEST,
                               f"block {block} is not in the receipt's span {receipt.block_start}:{receipt.block_end}")
        rel = block - receipt.block_start
        steps = entry.record.steps[: entry.step_index + 1]
        with torch.inference_mode():
            inputs = torch.cat([(s.hidden if rel == 0 else s.per_block[rel - 1]).tensor() for s in steps], dim=1)
        step = steps[-1]
        # All leaves (32 bytes a block) let the verifier check every block of the span a little
        # (a skipped block shows as two equal leaves); input_proof ties the input rows to the
        # previous block's committed output.
        meta = {"receipt": entry.signed.to_bytes(), "block": block, "leaf_index": rel,
                "num_leaves": len(step.leaves), "proof": block_proof(step.leaves, rel),
                "leaves": list(step.leaves)}
        if rel > 0:
            meta["input_proof"] = block_proof(step.leaves, rel - 1)
        return Frame("openings", meta, [tensor_to_wire(inputs), tensor_to_wire(step.per_block[rel].tensor())])
