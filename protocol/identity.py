"""Ed25519 identities of nodes, clients, verifiers and the ledger, and their key files.

A key file is JSON (chosen over PEM so it can also carry the optional EVM binding):

    {"version": 1, "type": "ed25519", "private_key": "<64 hex>", "public_key": "<64 hex>",
     "binding": {...Binding.to_json()...}  # optional}

It is created with mode 0600 (parent directory 0700 when we create it) and refused when
group/other can read it, so a leaked key is a visible mistake rather than a silent one.
The private key never appears in repr, logs or error messages.
"""

from __future__ import annotations

import json
import os
import stat
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from protocol.sodium import sodium_sign_detached as _sodium_sign
from protocol.sodium import sodium_verify_detached as _sodium_verify

PUBLIC_KEY_SIZE = 32
SIGNATURE_SIZE = 64
KEY_FILE_VERSION = 1
DEFAULT_KEY_PATH = Path("~/.corolla/identity.key")


class KeyFileError(ValueError):
    """A key file that is missing, malformed or readable by others."""


def default_key_path() -> Path:
    """$COROLLA_KEY if set, else ~/.corolla/identity.key."""
    return Path(os.environ.get("COROLLA_KEY") or DEFAULT_KEY_PATH).expanduser()


class Identity:
    """An Ed25519 signing key. `public_key` (32 raw bytes) is the party's name everywhere."""

    __slots__ = ("_private", "_sodium_key", "public_key", "binding_json")

    def __init__(self, private_key: Ed25519PrivateKey, binding_json: dict[str, Any] | None = None):
        self._private = private_key
        self.public_key: bytes = private_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        # libsodium's secret key form (seed || public key), when libsodium signs for us
        self._sodium_key = self.private_bytes() + self.public_key if _sodium_sign is not None else b""
        # The EVM binding, if the key file carries one (protocol.binding.Binding.to_json()).
        self.binding_json = binding_json

    @classmethod
    def generate(cls) -> Identity:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_private_bytes(cls, raw: bytes) -> Identity:
        """Deterministic identity from a 32-byte seed (test vectors, fixtures)."""
        if len(raw) != 32:
            raise ValueError("an Ed25519 private key is 32 bytes")
        return cls(Ed25519PrivateKey.from_private_bytes(raw))

    @property
    def public_hex(self) -> str:
        return self.public_key.hex()

    def sign(self, message: bytes) -> bytes:
        """64-byte Ed25519 signature of `message` (libsodium when present, without the GIL;
        the same bytes as `cryptography`'s: Ed25519 is deterministic)."""
        if _sodium_sign is not None and type(message) is bytes:
            return _sodium_sign(self._sodium_key, message)
        return self._private.sign(message)

    def sign_openssl(self, message: bytes) -> bytes:
        """`sign` through `cryptography` only (the reference the libsodium path is tested against)."""
        return self._private.sign(message)

    def private_bytes(self) -> bytes:
        """The 32-byte seed; only for writing the key file."""
        return self._private.private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        )

    def __repr__(self) -> str:
        return f"Identity(public_key={self.public_hex})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Identity) and other.public_key == self.public_key

    def __hash__(self) -> int:
        return hash(self.public_key)

    # ----- key files -------------------------------------------------------------------

    def to_key_file_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "version": KEY_FILE_VERSION,
            "type": "ed25519",
            "private_key": self.private_bytes().hex(),
            "public_key": self.public_hex,
        }
        if self.binding_json is not None:
            body["binding"] = self.binding_json
        return body

    def save(self, path: str | os.PathLike[str], *, overwrite: bool = False) -> None:
        """Write the key file atomically with mode 0600; refuses to replace one unless asked."""
        path = Path(path).expanduser()
        _make_private_dir(path.parent)
        data = (json.dumps(self.to_key_file_json(), indent=2) + "\n").encode()
        fd, tmp = tempfile.mkstemp(prefix=".identity-", dir=path.parent)  # mkstemp uses 0600
        try:
            os.write(fd, data)
            os.fsync(fd)
            os.close(fd)
            if overwrite:
                os.replace(tmp, path)
            else:
                os.link(tmp, path)  # atomic; FileExistsError if somebody else won the race
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Identity:
        """Read a key file; KeyFileError with the reason when missing, malformed or too open."""
        path = Path(path).expanduser()
        try:
            st = os.stat(path)
        except FileNotFoundError:
            raise KeyFileError(f"key file {path} does not exist (create it with `corolla keys new`)") from None
        if not stat.S_ISREG(st.st_mode):
            raise KeyFileError(f"key file {path} is not a regular file")
        if st.st_mode & 0o077:
            raise KeyFileError(
                f"key file {path} is readable by others (mode {stat.S_IMODE(st.st_mode):o}); "
                f"run `chmod 600 {path}`"
            )
        try:
            body = json.loads(path.read_bytes())
            if body.get("type") != "ed25519" or body.get("version") != KEY_FILE_VERSION:
                raise ValueError("unknown key type or version")
            seed = bytes.fromhex(body["private_key"])
            identity = cls.from_private_bytes(seed)
        except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError):
            raise KeyFileError(f"key file {path} is not a Corolla Ed25519 key file") from None
        if body.get("public_key") not in (None, identity.public_hex):
            raise KeyFileError(f"key file {path} is corrupt: public key does not match private key")
        binding = body.get("binding")
        identity.binding_json = binding if isinstance(binding, dict) else None
        return identity

    @classmethod
    def load_or_create(cls, path: str | os.PathLike[str]) -> Identity:
        """Load the key at `path`, creating it (mode 0600) on first use."""
        path = Path(path).expanduser()
        if not path.exists():
            try:
                cls.generate().save(path)
            except FileExistsError:
                pass  # another process created it first: use theirs
        return cls.load(path)


def _make_private_dir(directory: Path) -> None:
    if not directory.exists():
        directory.mkdir(parents=True, mode=0o700, exist_ok=True)


@lru_cache(maxsize=4096)
def _public_key(raw: bytes) -> Ed25519PublicKey:
    return Ed25519PublicKey.from_public_bytes(raw)


def verify_signature(public_key: bytes, message: bytes, signature: bytes) -> bool:
    """True iff `signature` is `public_key`'s Ed25519 signature of `message`. Never raises.

    libsodium when the system has it (twice as fast, see protocol/sodium.py), else OpenSSL.
    """
    if _sodium_verify is not None and type(public_key) is bytes and type(message) is bytes \
            and type(signature) is bytes:
        if len(public_key) != PUBLIC_KEY_SIZE or len(signature) != SIGNATURE_SIZE:
            return False
        return _sodium_verify(signature, message, len(message), public_key) == 0
    return verify_signature_openssl(public_key, message, signature)


def verify_signature_openssl(public_key: bytes, message: bytes, signature: bytes) -> bool:
    """`verify_signature` through `cryptography` only (the reference the libsodium path is tested against)."""
    try:
        if len(public_key) != PUBLIC_KEY_SIZE or len(signature) != SIGNATURE_SIZE:
            return False
        _public_key(bytes(public_key)).verify(bytes(signature), bytes(message))
        return True
    except (InvalidSignature, ValueError, TypeError):
        return False
