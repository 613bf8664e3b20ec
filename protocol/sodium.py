"""Ed25519 verification and signing through the system libsodium, when it is there.

Everyone verifies Ed25519 signatures on a hot path: the ledger two per receipt, the client
one per hop and step, the node one per counter-signature. libsodium (`libsodium23` on
Debian, installed by `scripts/setup --system`) verifies in about half the time of
OpenSSL's Ed25519 behind `cryptography` (≈ 51 µs vs ≈ 105 µs on the 2-core CI machine,
`benchmarks/ledger.py` prints which one ran), and ctypes releases the GIL during the call.
Without libsodium, `protocol.identity.verify_signature` falls back to `cryptography`.

libsodium's `crypto_sign_verify_detached` is the same cofactorless check as OpenSSL's and
is stricter, never looser: it also refuses small-order and non-canonical public keys and a
small-order R, which no honest signer produces. Every signature libsodium accepts, OpenSSL
accepts too (tests/protocol/test_sodium.py). `COROLLA_NO_LIBSODIUM=1` forces `cryptography`.

Signing (`crypto_sign_ed25519_detached`) takes ≈ 18 µs vs ≈ 32 µs for `cryptography`, also
without the GIL, which matters on the node's compute thread and the client's receipt checker.
Ed25519 signatures are deterministic (RFC 8032), so both produce the same bytes: receipts,
acks and test vectors do not depend on which one ran (tests/protocol/test_sodium.py).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from collections.abc import Callable


def _library() -> ctypes.CDLL | None:
    if os.environ.get("COROLLA_NO_LIBSODIUM"):
        return None
    for name in (ctypes.util.find_library("sodium"), "libsodium.so.23", "libsodium.so.26"):
        if not name:
            continue
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        if lib.sodium_init() < 0:
            return None
        return lib
    return None


def _verifier(lib: ctypes.CDLL | None) -> Callable[[bytes, bytes, int, bytes], int] | None:
    if lib is None:
        return None
    fn = lib.crypto_sign_ed25519_verify_detached
    fn.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulonglong, ctypes.c_char_p]
    fn.restype = ctypes.c_int
    return fn  # type: ignore[no-any-return]


def _signer(lib: ctypes.CDLL | None) -> Callable[[bytes, bytes], bytes] | None:
    if lib is None:
        return None
    fn = lib.crypto_sign_ed25519_detached
    fn.argtypes = [ctypes.c_char_p, ctypes.c_void_p, ctypes.c_char_p, ctypes.c_ulonglong, ctypes.c_char_p]
    fn.restype = ctypes.c_int

    def sign(secret_key: bytes, message: bytes) -> bytes:
        signature = ctypes.create_string_buffer(64)
        if fn(signature, None, message, len(message), secret_key) != 0:
            raise ValueError("libsodium refused to sign")
        return signature.raw

    return sign


_lib = _library()

sodium_verify_detached = _verifier(_lib)
"""(signature, message, len(message), public_key) -> 0 iff valid; None without libsodium.
Arguments must be `bytes` of the right sizes (64-byte signature, 32-byte key)."""

sodium_sign_detached = _signer(_lib)
"""(secret_key, message) -> 64-byte signature; None without libsodium. `secret_key` is
libsodium's 64-byte form, seed (32) || public key (32), as `bytes`; `message` is `bytes`."""

BACKEND = "libsodium" if sodium_verify_detached is not None else "cryptography"
