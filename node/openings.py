"""What a node keeps so it can answer challenges, and the `open` RPC's answer.

For every receipt the node retains, for a bounded window (bytes and age), the exact
tensors behind its commitments: the span input rows of each step and each block's output
rows. A challenge `(receipt id, block)` is answered with that block's input rows for the
whole prefix (positions 0..end of the receipt's step), its output rows for the step, and
the Merkle proof of the output's leaf under the receipt's blocks root. Keeping the real
tensors (not recomputing them) guarantees the openings hash to what was signed.

They are kept as the exact bytes that were hashed (`RawTensor`: dtype name, shape, C-order
bytes; a step's block outputs stacked, read once for the leaf digests and copied from the
same view), not as torch
tensors, and in plain tuples of bytes, strings and ints: objects the garbage collector
stops tracking, so a retention window of thousands of steps adds one tracked object per
step (its `Retained` entry), not a dozen. A full collection walks every tracked object;
on a node that retained hundreds of tracked objects per token it stalled the step in
flight for ~0.25 s every few hundred tokens (benchmarks/receipts.py).
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


RawTensor = tuple[str, tuple[int, ...], bytes]
"""A tensor as the bytes its digest covers (protocol/tensor_hash.py): dtype name, shape, bytes."""

StepRecord = tuple[RawTensor, RawTensor, tuple[bytes, ...]]
"""One step: its span input rows, its blocks' output rows stacked ([blocks, *rows shape]),
and the digest of each block's output rows (the Merkle leaves)."""


def step_record(hidden: torch.Tensor, per_block: list[torch.Tensor]) -> StepRecord:
    """What retention keeps of a step, and its leaves: the blocks' outputs are stacked, read
    and copied once, and each block's digest is taken from its slice of the same bytes."""
    stacked = torch.stack(per_block)
    view, name, shape = tensor_bytes(stacked), dtype_name(stacked.dtype), tuple(stacked.shape)
    n = len(view) // len(per_block)
    leaves = tuple(tensor_digest_raw(name, shape[1:], view[i * n : (i + 1) * n]) for i in range(len(per_block)))
    return raw_tensor(hidden), (name, shape, bytes(view)), leaves


def raw_tensor(t: torch.Tensor) -> RawTensor:
    return dtype_name(t.dtype), tuple(t.shape), bytes(tensor_bytes(t))


def raw_to_tensor(raw: RawTensor) -> torch.Tensor:
    name, shape, data = raw
    dtype = getattr(torch, name)
    if not data:
        return torch.empty(shape, dtype=dtype)
    return torch.frombuffer(bytearray(data), dtype=dtype).reshape(shape)


def step_nbytes(step: StepRecord) -> int:
    hidden, blocks, _ = step
    return len(hidden[2]) + len(blocks[2])


@dataclass
class SessionRecord:
    steps: list[StepRecord] = field(default_factory=list)


@dataclass(slots=True)
class Retained:
    signed: bytes  # SignedReceipt.to_bytes()
    client_key: bytes
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
        nbytes = step_nbytes(record.steps[step_index])
        entry = Retained(signed.to_bytes(), signed.receipt.client_key, record, step_index, time.monotonic(), nbytes)
        with self._lock:
            self._entries[signed.id] = entry
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

    def client_key(self, receipt_id: bytes) -> bytes | None:
        """The client a retained receipt names (to check its counter-signature)."""
        with self._lock:
            entry = self._entries.get(receipt_id)
        return entry.client_key if entry is not None else None

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
        receipt = SignedReceipt.from_bytes(entry.signed).receipt
        if not receipt.block_start <= block < receipt.block_end:
            return error_frame(ErrorCode.BAD_REQUEST,
                               f"block {block} is not in the receipt's span {receipt.block_start}:{receipt.block_end}")
        rel = block - receipt.block_start
        steps = entry.record.steps[: entry.step_index + 1]
        with torch.inference_mode():
            inputs = torch.cat([raw_to_tensor(hidden) if rel == 0 else raw_to_tensor(blocks)[rel - 1]
                                for hidden, blocks, _ in steps], dim=1)
        _, blocks, leaves = steps[-1]
        # All leaves (32 bytes a block) let the verifier check every block of the span a little
        # (a skipped block shows as two equal leaves); input_proof ties the input rows to the
        # previous block's committed output.
        meta = {"receipt": entry.signed, "block": block, "leaf_index": rel,
                "num_leaves": len(leaves), "proof": block_proof(list(leaves), rel), "leaves": list(leaves)}
        if rel > 0:
            meta["input_proof"] = block_proof(list(leaves), rel - 1)
        return Frame("openings", meta, [tensor_to_wire(inputs), tensor_to_wire(raw_to_tensor(blocks)[rel])])
