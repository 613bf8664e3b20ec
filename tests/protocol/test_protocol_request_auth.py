"""Signed ledger requests: any change to method, path, body, time or signer is caught."""

from __future__ import annotations

import pytest

from protocol.request_auth import AuthError, authenticate_request, sign_request, verify_request
from protocol.vectors.generate import CLIENT, NODE

NOW = 1_795_000_000_000
BODY = b'{"receipts": []}'


def headers():
    return sign_request(NODE, "POST", "/v1/receipts", BODY, now_ms=NOW)


def test_signed_request_verifies_and_returns_key_and_nonce():
    h = headers()
    auth = authenticate_request(h, "POST", "/v1/receipts", BODY, now_ms=NOW + 1000)
    assert auth.public_key == NODE.public_key and auth.nonce.hex() == h["X-Corolla-Nonce"]
    lower = {k.lower(): v for k, v in h.items()}  # header names are case-insensitive
    assert verify_request(lower, "post", "/v1/receipts", BODY, now_ms=NOW) == NODE.public_key
    assert headers()["X-Corolla-Nonce"] != h["X-Corolla-Nonce"]


@pytest.mark.parametrize("method,path,body,now,reason", [
    ("PUT", "/v1/receipts", BODY, NOW, "bad request signature"),
    ("POST", "/v1/receipts?x=1", BODY, NOW, "bad request signature"),
    ("POST", "/v1/receipts", BODY + b" ", NOW, "bad request signature"),
    ("POST", "/v1/receipts", BODY, NOW + 61_000, "too far"),
    ("POST", "/v1/receipts", BODY, NOW - 61_000, "too far"),
])
def test_changed_request_is_rejected(method, path, body, now, reason):
    with pytest.raises(AuthError, match=reason):
        verify_request(headers(), method, path, body, now_ms=now)


@pytest.mark.parametrize("change", [
    {"X-Corolla-Key": CLIENT.public_hex},
    {"X-Corolla-Timestamp": str(NOW + 1)},
    {"X-Corolla-Nonce": "00" * 16},
    {"X-Corolla-Signature": "00" * 64},
    {"X-Corolla-Signature": "zz"},
    {"X-Corolla-Timestamp": "-5"},
    {"X-Corolla-Key": "ab"},
])
def test_tampered_headers_are_rejected(change):
    with pytest.raises(AuthError):
        verify_request({**headers(), **change}, "POST", "/v1/receipts", BODY, now_ms=NOW)


def test_missing_header_is_named():
    h = headers()
    del h["X-Corolla-Nonce"]
    with pytest.raises(AuthError, match="missing header X-Corolla-Nonce"):
        verify_request(h, "POST", "/v1/receipts", BODY, now_ms=NOW)
