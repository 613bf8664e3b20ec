"""protocol.identity.verify_signature through libsodium agrees with `cryptography` on honest
and tampered signatures, and is never looser (it refuses small-order keys outright)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from protocol.identity import Identity, verify_signature
from protocol.identity import verify_signature_openssl as verify_openssl
from protocol.sodium import BACKEND

# A small-order point (order 4): a "public key" under which one forged signature can pass for
# many messages with a cofactorless verifier that accepts it.
SMALL_ORDER_KEY = bytes.fromhex("0000000000000000000000000000000000000000000000000000000000000080")


def test_fast_verifier_agrees_with_cryptography_on_good_and_bad_signatures() -> None:
    for _ in range(50):
        identity = Identity.generate()
        message = os.urandom(323)
        sig = identity.sign(message)
        flipped_sig = bytes([sig[0] ^ 1]) + sig[1:]
        other = Identity.generate().public_key
        cases = [
            (identity.public_key, message, sig), (identity.public_key, message + b"x", sig),
            (identity.public_key, message, flipped_sig), (other, message, sig),
            (identity.public_key, message, sig[:63]), (identity.public_key[:31], message, sig),
            (identity.public_key, b"", sig), (bytearray(identity.public_key), message, sig),
        ]
        for key, msg, signature in cases:
            assert verify_signature(key, msg, signature) == verify_openssl(key, msg, signature)
    assert verify_signature("ab" * 32, b"m", b"s" * 64) is False  # type: ignore[arg-type]


def test_fast_verifier_never_accepts_what_openssl_rejects_and_refuses_small_order_keys() -> None:
    if BACKEND != "libsodium":
        pytest.skip("libsodium is absent: verify_signature uses cryptography's verifier")
    # S + L instead of S (non-canonical): both refuse
    identity = Identity.generate()
    sig = identity.sign(b"m")
    order = 2**252 + 27742317777372353535851937790883648493
    non_canonical = sig[:32] + (int.from_bytes(sig[32:], "little") + order).to_bytes(32, "little")
    assert not verify_signature(identity.public_key, b"m", non_canonical)
    assert not verify_openssl(identity.public_key, b"m", non_canonical)
    # R = identity point, S = 0: valid for a quarter of all messages under a small-order key
    # with a cofactorless check that accepts such keys; libsodium refuses the key itself.
    forged = bytes.fromhex("01" + "00" * 31) + bytes(32)
    assert not any(verify_signature(SMALL_ORDER_KEY, bytes([i]), forged) for i in range(16))


def test_libsodium_signatures_are_the_bytes_cryptography_makes() -> None:
    """Ed25519 is deterministic: the libsodium signer changes no receipt, ack or vector."""
    for size in (0, 1, 32, 323, 387, 4096):
        identity = Identity.generate()
        message = os.urandom(size)
        assert identity.sign(message) == identity.sign_openssl(message)
        assert identity.sign(bytearray(message)) == identity.sign_openssl(message)  # type: ignore[arg-type]
        assert verify_openssl(identity.public_key, message, identity.sign(message))
    seeded = Identity.from_private_bytes(bytes(range(32)))
    assert seeded.sign(b"COROLLA") == seeded.sign_openssl(b"COROLLA")


def test_without_libsodium_signing_and_verifying_fall_back_to_cryptography() -> None:
    code = (
        "from protocol.identity import Identity, verify_signature\n"
        "from protocol.sodium import BACKEND, sodium_sign_detached, sodium_verify_detached\n"
        "assert BACKEND == 'cryptography' and sodium_sign_detached is None and sodium_verify_detached is None\n"
        "i = Identity.from_private_bytes(bytes(range(32)))\n"
        "sig = i.sign(b'm')\n"
        "assert verify_signature(i.public_key, b'm', sig) and not verify_signature(i.public_key, b'n', sig)\n"
        "print(sig.hex())\n"
    )
    env = {**os.environ, "COROLLA_NO_LIBSODIUM": "1"}
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=root, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == Identity.from_private_bytes(bytes(range(32))).sign(b"m").hex()
