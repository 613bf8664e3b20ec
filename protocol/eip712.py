"""EIP-712 typed data that the NodeRegistry contract verifies: the `Slash` authorisation.

Verifiers sign `Slash(bytes32 nodeKey, bytes32 receiptId, uint256 amount)` under the domain
(name "Corolla NodeRegistry", version "1", chainId, verifyingContract = the registry). A
quorum of such signatures, ordered by signer address, lets anyone slash a node on-chain.
Each receipt can be slashed once, so the receipt id doubles as the replay guard (no nonce).
The digest is computed by eth-account's `encode_typed_data`, the same code wallets use, and
asserted against `vectors/eip712.json` here and in contracts/test.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from eth_account import Account
from eth_account.messages import SignableMessage, encode_typed_data
from eth_utils import keccak

DOMAIN_NAME = "Corolla NodeRegistry"
DOMAIN_VERSION = "1"
SLASH_TYPE = "Slash(bytes32 nodeKey,bytes32 receiptId,uint256 amount)"

_TYPES = {
    "EIP712Domain": [
        {"name": "name", "type": "string"},
        {"name": "version", "type": "string"},
        {"name": "chainId", "type": "uint256"},
        {"name": "verifyingContract", "type": "address"},
    ],
    "Slash": [
        {"name": "nodeKey", "type": "bytes32"},
        {"name": "receiptId", "type": "bytes32"},
        {"name": "amount", "type": "uint256"},
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


def slash_typed_data(req: SlashRequest) -> dict[str, Any]:
    """The full EIP-712 typed-data document (as `eth_signTypedData_v4` takes it)."""
    return {
        "types": _TYPES,
        "primaryType": "Slash",
        "domain": {
            "name": DOMAIN_NAME,
            "version": DOMAIN_VERSION,
            "chainId": req.chain_id,
            "verifyingContract": req.registry,
        },
        "message": {"nodeKey": req.node_key, "receiptId": req.receipt_id, "amount": req.amount},
    }


def slash_digest(req: SlashRequest) -> bytes:
    """The 32-byte digest `keccak256(0x1901 || domainSeparator || structHash)` that is signed."""
    msg = _signable(req)
    return keccak(b"\x19" + msg.version + msg.header + msg.body)


def domain_separator(req: SlashRequest) -> bytes:
    """The EIP-712 domain separator of the registry named in `req`."""
    return bytes(_signable(req).header)


def struct_hash(req: SlashRequest) -> bytes:
    """keccak256(abi.encode(SLASH_TYPEHASH, nodeKey, receiptId, amount))."""
    return bytes(_signable(req).body)


def sign_slash(private_key: bytes | str, req: SlashRequest) -> bytes:
    """A verifier's 65-byte (r || s || v) signature over the slash digest."""
    signed = Account.sign_typed_data(private_key, full_message=slash_typed_data(req))
    return bytes(signed.signature)


def recover_slash_signer(req: SlashRequest, signature: bytes) -> str:
    """The checksummed address that produced `signature` over `req`."""
    return str(Account.recover_message(_signable(req), signature=signature))


def _signable(req: SlashRequest) -> SignableMessage:
    return encode_typed_data(full_message=slash_typed_data(req))
