"""Verdict v1: a verifier's signed judgement of one block of one receipt.

It carries what anyone needs to recompute it (receipt id, block, openings hash, tolerance)
so a false verdict is exposed by rechecking, and it is signed under its own domain tag.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from protocol.fields import check_bytes, check_float, check_uint, hex_field, require, uint_field
from protocol.hashing import digest
from protocol.identity import SIGNATURE_SIZE, Identity, verify_signature

VERDICT_DOMAIN = b"COROLLA/verdict/v1"

_LAYOUT = struct.Struct(">32s32sHBB32sddQ")
VERDICT_SIZE = len(VERDICT_DOMAIN) + _LAYOUT.size
SIGNED_VERDICT_SIZE = VERDICT_SIZE + SIGNATURE_SIZE


class Result(IntEnum):
    PASS = 1
    FAIL = 2
    UNREACHABLE = 3


class Reason(IntEnum):
    NONE = 0
    OUTPUT_MISMATCH = 1  # recomputed block output differs beyond tolerance
    OPENING_HASH_MISMATCH = 2  # openings do not hash to the receipt's commitments
    MERKLE_MISMATCH = 3  # block output not under the receipt's blocks_root
    CHAIN_MISMATCH = 4  # input/output hashes do not chain with neighbouring receipts
    REPLAY = 5  # output repeated from an earlier request
    UNREACHABLE = 6  # node did not answer the challenge in time
    RECEIPT_MISMATCH = 7  # receipt does not describe what was sent
    MALFORMED = 8  # openings unparseable / wrong shapes


@dataclass(frozen=True)
class Verdict:
    receipt_id: bytes
    verifier_key: bytes
    block: int
    result: Result
    reason: Reason
    openings_hash: bytes
    tolerance: float
    measured: float
    timestamp_ms: int

    def __post_init__(self) -> None:
        for name in ("receipt_id", "verifier_key", "openings_hash"):
            object.__setattr__(self, name, check_bytes(name, getattr(self, name), 32))
        check_uint("block", self.block, 16)
        check_uint("timestamp_ms", self.timestamp_ms, 64)
        object.__setattr__(self, "tolerance", check_float("tolerance", self.tolerance))
        object.__setattr__(self, "measured", check_float("measured", self.measured))
        try:
            object.__setattr__(self, "result", Result(self.result))
            object.__setattr__(self, "reason", Reason(self.reason))
        except ValueError as exc:
            raise ValueError(f"bad verdict result/reason: {exc}") from None

    def encode(self) -> bytes:
        return VERDICT_DOMAIN + _LAYOUT.pack(
            self.receipt_id, self.verifier_key, self.block, int(self.result), int(self.reason),
            self.openings_hash, self.tolerance, self.measured, self.timestamp_ms,
        )

    @classmethod
    def decode(cls, data: bytes) -> Verdict:
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise ValueError("verdict must be bytes")
        data = bytes(data)
        if len(data) != VERDICT_SIZE or not data.startswith(VERDICT_DOMAIN):
            raise ValueError("not a COROLLA/verdict/v1 encoding")
        return cls(*_LAYOUT.unpack(data[len(VERDICT_DOMAIN):]))

    def verdict_id(self) -> bytes:
        return digest(self.encode())

    def sign(self, verifier: Identity) -> SignedVerdict:
        if verifier.public_key != self.verifier_key:
            raise ValueError("verdict verifier_key is not this identity's public key")
        return SignedVerdict(self, verifier.sign(self.encode()))

    def to_json(self) -> dict[str, Any]:
        return {
            "receipt_id": self.receipt_id.hex(), "verifier_key": self.verifier_key.hex(),
            "block": self.block, "result": self.result.name.lower(), "reason": self.reason.name.lower(),
            "openings_hash": self.openings_hash.hex(), "tolerance": self.tolerance,
            "measured": self.measured, "timestamp_ms": self.timestamp_ms,
        }

    @classmethod
    def from_json(cls, data: Any) -> Verdict:
        return cls(
            receipt_id=hex_field(data, "receipt_id", 32), verifier_key=hex_field(data, "verifier_key", 32),
            block=uint_field(data, "block", 16), result=_enum(Result, require(data, "result")),
            reason=_enum(Reason, require(data, "reason")),
            openings_hash=hex_field(data, "openings_hash", 32),
            tolerance=check_float("tolerance", require(data, "tolerance")),
            measured=check_float("measured", require(data, "measured")),
            timestamp_ms=uint_field(data, "timestamp_ms", 64),
        )


def _enum(cls: type[Result] | type[Reason], value: Any) -> Any:
    """Accept the lowercase name (JSON form) or the number."""
    try:
        if isinstance(value, str):
            return cls[value.upper()]
        if isinstance(value, int) and not isinstance(value, bool):
            return cls(value)
    except (KeyError, ValueError):
        pass
    raise ValueError(f"unknown {cls.__name__.lower()} {value!r}")


@dataclass(frozen=True)
class SignedVerdict:
    verdict: Verdict
    signature: bytes

    def __post_init__(self) -> None:
        object.__setattr__(self, "signature", check_bytes("signature", self.signature, SIGNATURE_SIZE))

    @property
    def id(self) -> bytes:
        return self.verdict.verdict_id()

    def verify(self) -> bool:
        return verify_signature(self.verdict.verifier_key, self.verdict.encode(), self.signature)

    def to_bytes(self) -> bytes:
        return self.verdict.encode() + self.signature

    @classmethod
    def from_bytes(cls, data: bytes) -> SignedVerdict:
        if not isinstance(data, (bytes, bytearray, memoryview)) or len(data) != SIGNED_VERDICT_SIZE:
            raise ValueError(f"signed verdict must be {SIGNED_VERDICT_SIZE} bytes")
        data = bytes(data)
        return cls(Verdict.decode(data[:VERDICT_SIZE]), data[VERDICT_SIZE:])

    def to_json(self) -> dict[str, Any]:
        return {"verdict": self.verdict.to_json(), "signature": self.signature.hex(), "id": self.id.hex()}

    @classmethod
    def from_json(cls, data: Any) -> SignedVerdict:
        signed = cls(Verdict.from_json(require(data, "verdict")), hex_field(data, "signature", SIGNATURE_SIZE))
        claimed = data.get("id")
        if claimed is not None and claimed != signed.id.hex():
            raise ValueError("verdict id does not match its contents")
        return signed


OPENINGS_DOMAIN = b"COROLLA/openings/v1"
NO_OPENINGS = bytes(32)  # openings_hash of a verdict that got no openings (unreachable)


def openings_hash(evidence: bytes) -> bytes:
    """A verdict's `openings_hash`: digest of the evidence it was judged on, zeros for none.

    The ledger stores the evidence with the verdict and checks it against this hash, so
    anyone can recompute the verdict from the ledger's records (`corolla verifier recheck`).
    """
    from protocol.hashing import digest

    return digest(OPENINGS_DOMAIN + evidence) if evidence else NO_OPENINGS
