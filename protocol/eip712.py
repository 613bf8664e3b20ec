"""EIP-712 typed data that the NodeRegistry contract verifies: `Slash` and `Binding`.

Both live under the domain (name "Corolla NodeRegistry", version "1", chainId,
verifyingContract = the registry).

- `Slash(bytes32 nodeKey, bytes32 receiptId, uint256 amount)`: signed by verifiers. A
  quorum of such signatures, ordered by signer address, lets anyone slash a node on-chain.
  Each receipt can be slashed once, so the receipt id doubles as the replay guard (no nonce).
- `Binding(bytes32 nodeKey, address operator)`: signed by the registry's attester (the
  ledger's chain key) after it checked the dual-signed binding message (protocol/binding.py),
  since Ed25519 cannot be verified on-chain. Only `operator` can use it, to register
  `nodeKey` once (a key is never registered twice), so it needs no nonce either.

The digests are computed by eth-account's `encode_typed_data`, the same code wallets use,
and asserted against `vectors/eip712.json` here and in contracts/test.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from eth_account import Account
from eth_account.messages import SignableMessage, encode_typed_data
from eth_utils import is_address, keccak, to_checksum_address

DOMAIN_NAME = "Corolla NodeRegistry"
DOMAIN_VERSION = "1"
SLASH_TYPE = "Slash(bytes32 nodeKey,bytes32 receiptId,uint256 amount)"
BINDING_TYPE = "Binding(bytes32 nodeKey,address operator)"

_DOMAIN_TYPE = {
    "EIP712Domain": [
        {"name": "name", "type": "string"},
        {"name": "version", "type": "string"},
        {"name": "chainId", "type": "uint256"},
        {"name": "verifyingContract", "type": "address"},
    ],
}
_SLASH_TYPES = {
    **_DOMAIN_TYPE,
    "Slash": [
        {"name": "nodeKey", "type": "bytes32"},
        {"name": "receiptId", "type": "bytes32"},
        {"name": "amount", "type": "uint256"},
    ],
}
_BINDING_TYPES = {
    **_DOMAIN_TYPE,
    "Binding": [
        {"name": "nodeKey", "type": "bytes32"},
        {"name": "operator", "type": "address"},
    ],
}


@dataclass(frozen=True)
class SlashRequest:
    """What a verifier quorum authorises: burn `amount` of `node_key`'s stake for `receipt_id`."""

    chain_id: int
    registry: str  # NodeRegistry address, 0x-prefixed
    node_key: bytes  # raw 32-byte Ed25519 public key
    receipt_id: bytes  # 32-byte protocol receipt id
    amount: int  # token base units

    def __post_init__(self) -> None:
        if len(self.node_key) != 32 or len(self.receipt_id) != 32:
            raise ValueError("node_key and receipt_id must be 32 bytes")
        if not 0 <= self.amount < 2**256:
            raise ValueError("amount must fit in uint256")


@dataclass(frozen=True)
class BindingAttestation:
    """What the attester states: `operator` may register `node_key` in `registry`."""

    chain_id: int
    registry: str  # NodeRegistry address, 0x-prefixed
    node_key: bytes  # raw 32-byte Ed25519 public key
    operator: str  # the EVM address that holds the key (the one that will call register)

    def __post_init__(self) -> None:
        if len(self.node_key) != 32:
            raise ValueError("node_key must be 32 bytes")
        if not is_address(self.operator):
            raise ValueError("operator must be a 0x-prefixed 20-byte EVM address")


def _domain(chain_id: int, registry: str) -> dict[str, Any]:
    return {"name": DOMAIN_NAME, "version": DOMAIN_VERSION, "chainId": chain_id, "verifyingContract": registry}


def slash_typed_data(req: SlashRequest) -> dict[str, Any]:
    """The full EIP-712 typed-data document (as `eth_signTypedData_v4` takes it)."""
    return {
        "types": _SLASH_TYPES,
        "primaryType": "Slash",
        "domain": _domain(req.chain_id, req.registry),
        "message": {"nodeKey": req.node_key, "receiptId": req.receipt_id, "amount": req.amount},
    }


def binding_typed_data(att: BindingAttestation) -> dict[str, Any]:
    """The `Binding` typed-data document (as `eth_signTypedData_v4` takes it)."""
    return {
        "types": _BINDING_TYPES,
        "primaryType": "Binding",
        "domain": _domain(att.chain_id, att.registry),
        "message": {"nodeKey": att.node_key, "operator": to_checksum_address(att.operator)},
    }


def slash_digest(req: SlashRequest) -> bytes:
    """The 32-byte digest `keccak256(0x1901 || domainSeparator || structHash)` that is signed."""
    return _digest(_signable(req))


def binding_digest(att: BindingAttestation) -> bytes:
    """The digest the attester signs (NodeRegistry.bindingDigest(nodeKey, operator))."""
    return _digest(_signable(att))


def domain_separator(req: SlashRequest | BindingAttestation) -> bytes:
    """The EIP-712 domain separator of the registry named in `req`."""
    return bytes(_signable(req).header)


def struct_hash(req: SlashRequest | BindingAttestation) -> bytes:
    """keccak256(abi.encode(TYPEHASH, fields...)) of a Slash or a Binding."""
    return bytes(_signable(req).body)


def sign_slash(private_key: bytes | str, req: SlashRequest) -> bytes:
    """A verifier's 65-byte (r || s || v) signature over the slash digest."""
    signed = Account.sign_typed_data(private_key, full_message=slash_typed_data(req))
    return bytes(signed.signature)


def recover_slash_signer(req: SlashRequest, signature: bytes) -> str:
    """The checksummed address that produced `signature` over `req`."""
    return str(Account.recover_message(_signable(req), signature=signature))


def sign_binding(private_key: bytes | str, att: BindingAttestation) -> bytes:
    """The attester's 65-byte (r || s || v) signature that lets `att.operator` register."""
    signed = Account.sign_typed_data(private_key, full_message=binding_typed_data(att))
    return bytes(signed.signature)


def recover_binding_signer(att: BindingAttestation, signature: bytes) -> str:
    """The checksummed address that produced `signature` over `att`."""
    return str(Account.recover_message(_signable(att), signature=signature))


def _signable(req: SlashRequest | BindingAttestation) -> SignableMessage:
    typed = slash_typed_data(req) if isinstance(req, SlashRequest) else binding_typed_data(req)
    return encode_typed_data(full_message=typed)


def _digest(msg: SignableMessage) -> bytes:
    return keccak(b"\x19" + msg.version + msg.header + msg.body)
