"""Receipt v1: what a node signs for every forward, backward or inference step.

The byte layout (see protocol/README.md) is fixed-width and starts with the domain tag
`COROLLA/receipt/v1`, so the encoding is canonical and a receipt signature can never be
replayed as a ticket, verdict or request signature. The receipt id is the digest of the
encoding, which makes resubmission idempotent everywhere (outbox, ledger).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field, fields
from enum import IntEnum
from functools import cached_property
from typing import Any

from protocol.fields import check_bytes, check_uint, hex_field, require, uint_field
from protocol.hashing import DIGEST_SIZE, digest
from protocol.identity import SIGNATURE_SIZE, Identity, verify_signature

RECEIPT_DOMAIN = b"COROLLA/receipt/v1"
ACK_DOMAIN = b"COROLLA/receipt-ack/v1"
ZERO32 = bytes(32)

_LAYOUT = struct.Struct(">32s32s32sHHB16sIII32s32s32s32s32sQQ")
RECEIPT_SIZE = len(RECEIPT_DOMAIN) + _LAYOUT.size  # 323 bytes
SIGNED_SIZE = RECEIPT_SIZE + SIGNATURE_SIZE
COUNTERSIGNED_SIZE = SIGNED_SIZE + SIGNATURE_SIZE


class Kind(IntEnum):
    FORWARD = 1
    BACKWARD = 2
    INFERENCE = 3


# field name -> (size in bytes for bytes fields | None, bits for ints | None)
_BYTES_FIELDS = {
    "node_key": 32, "client_key": 32, "model": 32, "session_id": 16, "input_hash": 32,
    "output_hash": 32, "blocks_root": 32, "request_ref": 32, "ticket_id": 32,
}
_UINT_FIELDS = {
    "block_start": 16, "block_end": 16, "step": 32, "batch": 32, "tokens": 32, "price": 64,
    "timestamp_ms": 64,
}


# field names in _LAYOUT order (the encoding puts price before timestamp_ms)
_DECODED_ORDER = ("node_key", "client_key", "model", "block_start", "block_end", "kind", "session_id", "step",
                  "batch", "tokens", "input_hash", "output_hash", "blocks_root", "request_ref", "ticket_id", "price",
                  "timestamp_ms")


@dataclass(frozen=True)
class Receipt:
    """One step of work: who, what, and commitments to the tensors that went in and out."""

    node_key: bytes
    client_key: bytes
    model: bytes  # manifest hash
    block_start: int
    block_end: int  # exclusive
    kind: Kind
    session_id: bytes  # 16 bytes; for forward/backward a per-call random id
    step: int
    batch: int
    tokens: int  # batch x new positions processed
    input_hash: bytes
    output_hash: bytes
    blocks_root: bytes
    request_ref: bytes
    timestamp_ms: int
    ticket_id: bytes = ZERO32  # zeros = free
    price: int = 0

    def __post_init__(self) -> None:
        for name, size in _BYTES_FIELDS.items():
            object.__setattr__(self, name, check_bytes(name, getattr(self, name), size))
        for name, bits in _UINT_FIELDS.items():
            check_uint(name, getattr(self, name), bits)
        try:
            object.__setattr__(self, "kind", Kind(self.kind))
        except ValueError:
            raise ValueError(f"unknown receipt kind {self.kind!r}") from None
        if self.block_end <= self.block_start:
            raise ValueError(f"empty block span [{self.block_start}, {self.block_end})")

    @cached_property
    def _encoded(self) -> bytes:
        return RECEIPT_DOMAIN + _LAYOUT.pack(
            self.node_key, self.client_key, self.model, self.block_start, self.block_end,
            int(self.kind), self.session_id, self.step, self.batch, self.tokens,
            self.input_hash, self.output_hash, self.blocks_root, self.request_ref,
            self.ticket_id, self.price, self.timestamp_ms,
        )

    def encode(self) -> bytes:
        """Canonical bytes (what the node signs)."""
        return self._encoded

    @classmethod
    def decode(cls, data: bytes) -> Receipt:
        """Inverse of encode(); ValueError on anything that is not a valid receipt v1."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise ValueError("receipt must be bytes")
        data = bytes(data)
        if len(data) != RECEIPT_SIZE:
            raise ValueError(f"receipt must be {RECEIPT_SIZE} bytes, got {len(data)}")
        if not data.startswith(RECEIPT_DOMAIN):
            raise ValueError("not a COROLLA/receipt/v1 encoding")
        values = _LAYOUT.unpack(data[len(RECEIPT_DOMAIN):])
        # The fixed layout already gives every bytes field its size and every integer its
        # range, so only the kind and the span are left to check; and the encoding is `data`
        # itself (clients and the ledger decode a receipt per step: no re-validation, no re-pack).
        try:
            kind = Kind(values[5])
        except ValueError:
            raise ValueError(f"unknown receipt kind {values[5]!r}") from None
        if values[4] <= values[3]:
            raise ValueError(f"empty block span [{values[3]}, {values[4]})")
        receipt = cls.__new__(cls)
        receipt.__dict__.update(zip(_DECODED_ORDER, values, strict=True))
        receipt.__dict__["kind"] = kind
        receipt.__dict__["_encoded"] = data
        return receipt

    def receipt_id(self) -> bytes:
        return self._receipt_id

    @cached_property
    def _receipt_id(self) -> bytes:
        return digest(self._encoded)

    @property
    def num_blocks(self) -> int:
        return self.block_end - self.block_start

    @property
    def is_paid(self) -> bool:
        return self.ticket_id != ZERO32

    def sign(self, identity: Identity) -> SignedReceipt:
        """The node's signature; refuses to sign a receipt that names another node."""
        if identity.public_key != self.node_key:
            raise ValueError("receipt node_key is not this identity's public key")
        return SignedReceipt(self, identity.sign(self.encode()))

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "kind":
                out["kind"] = value.name.lower()
            elif isinstance(value, bytes):
                out[f.name] = value.hex()
            else:
                out[f.name] = value
        return out

    @classmethod
    def from_json(cls, data: Any) -> Receipt:
        """Parse the JSON form; `kind` may be the name ("inference") or the number."""
        kind_raw = require(data, "kind")
        if isinstance(kind_raw, str):
            try:
                kind = Kind[kind_raw.upper()]
            except KeyError:
                raise ValueError(f"unknown receipt kind {kind_raw!r}") from None
        elif isinstance(kind_raw, int) and not isinstance(kind_raw, bool):
            kind = kind_raw  # type: ignore[assignment]  # checked in __post_init__
        else:
            raise ValueError("kind must be a name or an integer")
        values: dict[str, Any] = {name: hex_field(data, name, size) for name, size in _BYTES_FIELDS.items()}
        values.update({name: uint_field(data, name, bits) for name, bits in _UINT_FIELDS.items()})
        return cls(kind=kind, **values)


REQUEST_REF_DOMAIN = b"COROLLA/request-ref/v1"


def request_ref_for_step(session_id: bytes, step: int) -> bytes:
    """The request reference of an inference step: client and node derive the same one."""
    return digest(REQUEST_REF_DOMAIN + check_bytes("session_id", session_id, 16) + step.to_bytes(4, "big"))


def ack_message(receipt_id: bytes) -> bytes:
    """What the client signs to acknowledge delivery of the output of a receipt."""
    return ACK_DOMAIN + check_bytes("receipt_id", receipt_id, DIGEST_SIZE)


@dataclass
class SignedReceipt:
    """A receipt with the node's signature and, once delivered, the client's counter-signature."""

    receipt: Receipt
    node_signature: bytes
    client_signature: bytes | None = field(default=None)

    def __post_init__(self) -> None:
        self.node_signature = check_bytes("node_signature", self.node_signature, SIGNATURE_SIZE)
        if self.client_signature is not None:
            self.client_signature = check_bytes("client_signature", self.client_signature, SIGNATURE_SIZE)

    @property
    def id(self) -> bytes:
        return self.receipt.receipt_id()

    def verify_node(self) -> bool:
        return verify_signature(self.receipt.node_key, self.receipt.encode(), self.node_signature)

    def verify_client(self) -> bool:
        """True iff counter-signed by the receipt's client_key (False when not counter-signed)."""
        if self.client_signature is None:
            return False
        return verify_signature(self.receipt.client_key, ack_message(self.id), self.client_signature)

    def verify(self) -> bool:
        """Node signature valid and, if present, the client counter-signature too."""
        return self.verify_node() and (self.client_signature is None or self.verify_client())

    def countersign(self, identity: Identity) -> SignedReceipt:
        """A copy with the client's acknowledgement; the identity must be the receipt's client."""
        if identity.public_key != self.receipt.client_key:
            raise ValueError("receipt client_key is not this identity's public key")
        return SignedReceipt(self.receipt, self.node_signature, identity.sign(ack_message(self.id)))

    def with_client_signature(self, signature: bytes) -> SignedReceipt:
        return SignedReceipt(self.receipt, self.node_signature, signature)

    # ----- wire forms ------------------------------------------------------------------

    def to_bytes(self) -> bytes:
        """Compact form: encoding (323) || node signature (64) [|| client signature (64)]."""
        out = self.receipt.encode() + self.node_signature
        return out + self.client_signature if self.client_signature is not None else out

    @classmethod
    def from_bytes(cls, data: bytes) -> SignedReceipt:
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise ValueError("signed receipt must be bytes")
        data = bytes(data)
        if len(data) not in (SIGNED_SIZE, COUNTERSIGNED_SIZE):
            raise ValueError(f"signed receipt must be {SIGNED_SIZE} or {COUNTERSIGNED_SIZE} bytes")
        receipt = Receipt.decode(data[:RECEIPT_SIZE])
        client = data[SIGNED_SIZE:] if len(data) == COUNTERSIGNED_SIZE else None
        return cls(receipt, data[RECEIPT_SIZE:SIGNED_SIZE], client)

    def to_json(self) -> dict[str, Any]:
        return {
            "receipt": self.receipt.to_json(),
            "node_signature": self.node_signature.hex(),
            "client_signature": None if self.client_signature is None else self.client_signature.hex(),
            "id": self.id.hex(),
        }

    @classmethod
    def from_json(cls, data: Any) -> SignedReceipt:
        """Parse the JSON form; ValueError with a reason (an `id` that does not match is one)."""
        receipt = Receipt.from_json(require(data, "receipt"))
        node_sig = hex_field(data, "node_signature", SIGNATURE_SIZE)
        client_sig = None
        if data.get("client_signature") is not None:
            client_sig = hex_field(data, "client_signature", SIGNATURE_SIZE)
        signed = cls(receipt, node_sig, client_sig)
        claimed = data.get("id")
        if claimed is not None and claimed != signed.id.hex():
            raise ValueError("receipt id does not match its contents")
        return signed
