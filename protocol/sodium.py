"""Ed25519 verification through the system libsodium, when it is there.

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
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from collections.abc import Callable


def _load() -> Callable[[bytes, bytes, int, bytes], int] | None:
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
        fn = lib.crypto_sign_ed25519_verify_detached
        fn.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulonglong, ctypes.c_char_p]
        fn.restype = ctypes.c_int
        return fn  # type: ignore[no-any-return]
    return None


sodium_verify_detached = _load()
"""(signature, message, len(message), public_key) -> 0 iff valid; None without libsodium.
Arguments must be `bytes` of the right sizes (64-byte signature, 32-byte key)."""

BACKEND = "libsodium" if sodium_verify_detached is not None else "cryptography"
