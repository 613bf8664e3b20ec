"""Key binding v1: one message signed by an Ed25519 identity and an EVM account.

Both signatures over the same bytes prove that one operator holds both keys, so the
ledger and the node registry contract can pay / slash the EVM address for the node key's
work. The EVM side is EIP-191 `personal_sign`, which Solidity checks with
`MessageHashUtils.toEthSignedMessageHash(message)` + `ECDSA.recover`. Implemented with
eth-keys directly (what eth-account uses inside) because importing eth-account costs ~1 s
and the ledger imports this module.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from eth_keys.datatypes import PrivateKey, Signature
from eth_utils import is_checksum_address, keccak, to_checksum_address

from protocol.fields import check_bytes, hex_field, require
from protocol.identity import SIGNATURE_SIZE, Identity, verify_signature

BINDING_DOMAIN = b"COROLLA/binding/v1"
EVM_SIGNATURE_SIZE = 65


def binding_message(ed25519_key: bytes, evm_address: str) -> bytes:
    """`COROLLA/binding/v1 || ed25519_key (32) || evm_address (20)`."""
    return BINDING_DOMAIN + check_bytes("ed25519_key", ed25519_key, 32) + _address_bytes(evm_address)


def _address_bytes(address: str) -> bytes:
    if not isinstance(address, str) or not address.startswith("0x") or len(address) != 42:
        raise ValueError("evm_address must be a 0x-prefixed 20-byte hex address")
    try:
        return bytes.fromhex(address[2:])
    except ValueError:
        raise ValueError("evm_address is not valid hex") from None


@dataclass(frozen=True)
class Binding:
    ed25519_key: bytes
    evm_address: str  # EIP-55 checksummed
    ed25519_signature: bytes
    evm_signature: bytes

    def __post_init__(self) -> None:
        check_bytes("ed25519_key", self.ed25519_key, 32)
        _address_bytes(self.evm_address)
        check_bytes("ed25519_signature", self.ed25519_signature, SIGNATURE_SIZE)
        check_bytes("evm_signature", self.evm_signature, EVM_SIGNATURE_SIZE)

    def message(self) -> bytes:
        return binding_message(self.ed25519_key, self.evm_address)

    def to_json(self) -> dict[str, Any]:
        return {
            "ed25519_key": self.ed25519_key.hex(),
            "evm_address": self.evm_address,
            "ed25519_signature": self.ed25519_signature.hex(),
            "evm_signature": self.evm_signature.hex(),
        }

    @classmethod
    def from_json(cls, data: Any) -> Binding:
        address = require(data, "evm_address")
        if not isinstance(address, str):
            raise ValueError("evm_address must be a string")
        _address_bytes(address)
        if not is_checksum_address(address):
            raise ValueError("evm_address must carry its EIP-55 checksum")
        return cls(
            ed25519_key=hex_field(data, "ed25519_key", 32),
            evm_address=address,
            ed25519_signature=hex_field(data, "ed25519_signature", SIGNATURE_SIZE),
            evm_signature=hex_field(data, "evm_signature", EVM_SIGNATURE_SIZE),
        )


def eip191_hash(message: bytes) -> bytes:
    """`personal_sign` digest: keccak256("\\x19Ethereum Signed Message:\\n" || len || message)."""
    return keccak(b"\x19Ethereum Signed Message:\n" + str(len(message)).encode() + message)


def _eth_private_key(key: bytes | str) -> PrivateKey:
    if isinstance(key, str):
        text = key.strip()
        text = text[2:] if text.startswith(("0x", "0X")) else text
        try:
            key = bytes.fromhex(text)
        except ValueError:
            raise ValueError("EVM private key is not hex") from None
    if len(key) != 32:
        raise ValueError("EVM private key must be 32 bytes")
    return PrivateKey(key)


def make_binding(identity: Identity, eth_private_key: bytes | str) -> Binding:
    """Bind `identity` to the EVM account of `eth_private_key` (hex string or 32 bytes)."""
    eth_key = _eth_private_key(eth_private_key)
    address = to_checksum_address(eth_key.public_key.to_checksum_address())
    message = binding_message(identity.public_key, address)
    sig = eth_key.sign_msg_hash(eip191_hash(message))
    evm_sig = sig.r.to_bytes(32, "big") + sig.s.to_bytes(32, "big") + bytes([sig.v + 27])
    return Binding(identity.public_key, address, identity.sign(message), evm_sig)


def recover_evm_address(message: bytes, evm_signature: bytes) -> str:
    """Checksummed signer of an EIP-191 signature (v as 27/28 or 0/1); ValueError if invalid."""
    if len(evm_signature) != EVM_SIGNATURE_SIZE:
        raise ValueError("EVM signature must be 65 bytes")
    v = evm_signature[64] - 27 if evm_signature[64] >= 27 else evm_signature[64]
    r, s = int.from_bytes(evm_signature[:32], "big"), int.from_bytes(evm_signature[32:64], "big")
    try:
        sig = Signature(vrs=(v, r, s))
        return str(sig.recover_public_key_from_msg_hash(eip191_hash(message)).to_checksum_address())
    except Exception as exc:  # eth-keys raises several error types for malformed signatures
        raise ValueError(f"invalid EVM signature: {exc}") from None


def verify_binding(binding: Binding) -> bool:
    """Both signatures valid over the binding message. Never raises."""
    try:
        message = binding.message()
        if not verify_signature(binding.ed25519_key, message, binding.ed25519_signature):
            return False
        return recover_evm_address(message, binding.evm_signature) == to_checksum_address(binding.evm_address)
    except (ValueError, TypeError):
        return False
