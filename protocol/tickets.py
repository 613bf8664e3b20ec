"""Priority ticket v1: a ledger-signed grant of escrowed credits that nodes check offline.

A node never calls the ledger on the hot path: it checks the ledger's signature, the
expiry, the client and (optionally) its own key locally. Spending is settled later by the
ledger from receipts that carry `ticket_id`, which is where caps are enforced.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

from protocol.fields import check_bytes, check_uint, hex_field, require, uint_field
from protocol.identity import SIGNATURE_SIZE, Identity, verify_signature

TICKET_DOMAIN = b"COROLLA/ticket/v1"
ANY_NODE = bytes(32)

_LAYOUT = struct.Struct(">32s32s32sQQ32s")
TICKET_SIZE = len(TICKET_DOMAIN) + _LAYOUT.size
SIGNED_TICKET_SIZE = TICKET_SIZE + SIGNATURE_SIZE


@dataclass(frozen=True)
class Ticket:
    ticket_id: bytes
    client_key: bytes
    node_key: bytes  # ANY_NODE (zeros) = any node
    cap: int  # credits
    expiry_ms: int
    ledger_key: bytes

    def __post_init__(self) -> None:
        for name in ("ticket_id", "client_key", "node_key", "ledger_key"):
            object.__setattr__(self, name, check_bytes(name, getattr(self, name), 32))
        check_uint("cap", self.cap, 64)
        check_uint("expiry_ms", self.expiry_ms, 64)

    def encode(self) -> bytes:
        return TICKET_DOMAIN + _LAYOUT.pack(
            self.ticket_id, self.client_key, self.node_key, self.cap, self.expiry_ms, self.ledger_key
        )

    @classmethod
    def decode(cls, data: bytes) -> Ticket:
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise ValueError("ticket must be bytes")
        data = bytes(data)
        if len(data) != TICKET_SIZE or not data.startswith(TICKET_DOMAIN):
            raise ValueError("not a COROLLA/ticket/v1 encoding")
        ticket_id, client_key, node_key, cap, expiry_ms, ledger_key = _LAYOUT.unpack(data[len(TICKET_DOMAIN):])
        return cls(ticket_id, client_key, node_key, cap, expiry_ms, ledger_key)

    def sign(self, ledger: Identity) -> SignedTicket:
        if ledger.public_key != self.ledger_key:
            raise ValueError("ticket ledger_key is not this identity's public key")
        return SignedTicket(self, ledger.sign(self.encode()))

    def to_json(self) -> dict[str, Any]:
        return {
            "ticket_id": self.ticket_id.hex(), "client_key": self.client_key.hex(),
            "node_key": self.node_key.hex(), "cap": self.cap, "expiry_ms": self.expiry_ms,
            "ledger_key": self.ledger_key.hex(),
        }

    @classmethod
    def from_json(cls, data: Any) -> Ticket:
        return cls(
            ticket_id=hex_field(data, "ticket_id", 32), client_key=hex_field(data, "client_key", 32),
            node_key=hex_field(data, "node_key", 32), cap=uint_field(data, "cap", 64),
            expiry_ms=uint_field(data, "expiry_ms", 64), ledger_key=hex_field(data, "ledger_key", 32),
        )


@dataclass(frozen=True)
class SignedTicket:
    ticket: Ticket
    signature: bytes

    def __post_init__(self) -> None:
        object.__setattr__(self, "signature", check_bytes("signature", self.signature, SIGNATURE_SIZE))

    @property
    def id(self) -> bytes:
        return self.ticket.ticket_id

    def verify(self, ledger_key: bytes) -> bool:
        """True iff issued (and signed) by the ledger whose key the caller trusts."""
        return self.ticket.ledger_key == ledger_key and verify_signature(
            ledger_key, self.ticket.encode(), self.signature
        )

    def check_for(
        self, client_key: bytes, node_key: bytes, now_ms: int, ledger_key: bytes | None = None
    ) -> str | None:
        """None if a node may honour this ticket now, else "forged" | "expired" | "wrong client" | "wrong node".

        Pass the trusted `ledger_key` (nodes must): without it only tampering is detected,
        since anybody can sign a ticket naming their own key as the ledger.
        """
        trusted = self.ticket.ledger_key if ledger_key is None else ledger_key
        if not self.verify(trusted):
            return "forged"
        if now_ms >= self.ticket.expiry_ms:
            return "expired"
        if self.ticket.client_key != client_key:
            return "wrong client"
        if self.ticket.node_key not in (ANY_NODE, node_key):
            return "wrong node"
        return None

    def to_bytes(self) -> bytes:
        return self.ticket.encode() + self.signature

    @classmethod
    def from_bytes(cls, data: bytes) -> SignedTicket:
        if not isinstance(data, (bytes, bytearray, memoryview)) or len(data) != SIGNED_TICKET_SIZE:
            raise ValueError(f"signed ticket must be {SIGNED_TICKET_SIZE} bytes")
        data = bytes(data)
        return cls(Ticket.decode(data[:TICKET_SIZE]), data[TICKET_SIZE:])

    def to_json(self) -> dict[str, Any]:
        return {"ticket": self.ticket.to_json(), "signature": self.signature.hex()}

    @classmethod
    def from_json(cls, data: Any) -> SignedTicket:
        return cls(Ticket.from_json(require(data, "ticket")), hex_field(data, "signature", SIGNATURE_SIZE))
