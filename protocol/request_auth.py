"""Signed HTTP requests to the ledger: no passwords, no API keys, just the account's key.

The signature covers method, request target, timestamp, a random nonce and the body's
SHA-256. The verifier here checks signature and clock skew; remembering nonces (replay
rejection within the skew window) is the ledger's job, so the nonce is returned to it.

PATH is the request target as sent: the URL path plus `?query` when there is one.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass

from protocol.identity import Identity, verify_signature

REQUEST_DOMAIN = b"COROLLA/request/v1"
HEADER_KEY = "X-Corolla-Key"
HEADER_TIMESTAMP = "X-Corolla-Timestamp"
HEADER_NONCE = "X-Corolla-Nonce"
HEADER_SIGNATURE = "X-Corolla-Signature"
NONCE_SIZE = 16


class AuthError(Exception):
    """A request whose signature headers are missing, malformed, stale or invalid."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class RequestAuth:
    """Who signed a request, when, and its nonce (for the ledger's replay check)."""

    public_key: bytes
    timestamp_ms: int
    nonce: bytes


def request_message(method: str, path: str, timestamp_ms: int, nonce: bytes, body: bytes) -> bytes:
    """`DOMAIN || METHOD || 0 || PATH || 0 || timestamp (decimal ASCII) || 0 || nonce (16 raw) || sha256(body)`."""
    return b"".join((
        REQUEST_DOMAIN, method.upper().encode("ascii"), b"\x00", path.encode("utf-8"), b"\x00",
        str(int(timestamp_ms)).encode("ascii"), b"\x00", nonce, hashlib.sha256(body).digest(),
    ))


def sign_request(
    identity: Identity, method: str, path: str, body: bytes, now_ms: int | None = None,
    nonce: bytes | None = None,
) -> dict[str, str]:
    """Headers to add to the request (`nonce` only for deterministic vectors)."""
    ts = int(time.time() * 1000) if now_ms is None else int(now_ms)
    nonce = os.urandom(NONCE_SIZE) if nonce is None else nonce
    if len(nonce) != NONCE_SIZE:
        raise ValueError("nonce must be 16 bytes")
    sig = identity.sign(request_message(method, path, ts, nonce, body))
    return {
        HEADER_KEY: identity.public_hex,
        HEADER_TIMESTAMP: str(ts),
        HEADER_NONCE: nonce.hex(),
        HEADER_SIGNATURE: sig.hex(),
    }


def _header(headers: Mapping[str, str], name: str) -> str:
    value = headers.get(name)
    if value is None:  # plain dicts are case-sensitive; HTTP headers are not
        lowered = name.lower()
        value = next((v for k, v in headers.items() if k.lower() == lowered), None)
    if value is None:
        raise AuthError(f"missing header {name}")
    return value


def _hex(headers: Mapping[str, str], name: str, size: int) -> bytes:
    try:
        raw = bytes.fromhex(_header(headers, name))
    except ValueError:
        raise AuthError(f"header {name} is not hex") from None
    if len(raw) != size:
        raise AuthError(f"header {name} must be {size} bytes")
    return raw


def authenticate_request(
    headers: Mapping[str, str], method: str, path: str, body: bytes, now_ms: int, max_skew_ms: int = 60_000
) -> RequestAuth:
    """Check the signature headers; AuthError(reason) when the request is not authentic."""
    key = _hex(headers, HEADER_KEY, 32)
    nonce = _hex(headers, HEADER_NONCE, NONCE_SIZE)
    signature = _hex(headers, HEADER_SIGNATURE, 64)
    ts_text = _header(headers, HEADER_TIMESTAMP)
    if not ts_text.isdigit() or len(ts_text) > 19:
        raise AuthError(f"header {HEADER_TIMESTAMP} must be milliseconds since the epoch")
    ts = int(ts_text)
    if abs(ts - now_ms) > max_skew_ms:
        raise AuthError("request timestamp too far from the ledger's clock")
    if not verify_signature(key, request_message(method, path, ts, nonce, body), signature):
        raise AuthError("bad request signature")
    return RequestAuth(key, ts, nonce)


def verify_request(
    headers: Mapping[str, str], method: str, path: str, body: bytes, now_ms: int, max_skew_ms: int = 60_000
) -> bytes:
    """The signer's public key; AuthError(reason) when the request is not authentic."""
    return authenticate_request(headers, method, path, body, now_ms, max_skew_ms).public_key
