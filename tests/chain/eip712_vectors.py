"""Generate protocol/vectors/eip712.json from protocol/eip712.py.

Run `python -m tests.chain.eip712_vectors` to rewrite the file; tests/chain/test_eip712.py
checks the checked-in file equals this output, and contracts/test/Vectors.t.sol checks the
contract computes the same digests and accepts the same signatures.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from eth_account import Account

from protocol.eip712 import (
    BINDING_TYPE,
    SLASH_TYPE,
    BindingAttestation,
    SlashRequest,
    binding_digest,
    domain_separator,
    sign_binding,
    sign_slash,
    slash_digest,
    struct_hash,
)

VECTORS = Path(__file__).resolve().parents[2] / "protocol" / "vectors" / "eip712.json"

# (chain id, registry, node key, receipt id, amount, signer key): edge values on purpose.
_CASES = [
    (31337, "0x5FbDB2315678afecb367f032d93F642f64180aa3", bytes([1]) * 32, bytes([2]) * 32, 1, 0x11),
    (1, "0x000000000000000000000000000000000000dEaD", bytes(range(32)), bytes(range(32, 64)), 10**21, 0x22),
    (8453, "0xFFfFfFffFFfffFFfFFfFFFFFffFFFffffFfFFFfF", b"\xff" * 32, b"\x00" * 31 + b"\x01", 2**256 - 1, 0x33),
]

# (chain id, registry, node key, operator, attester key): Binding attestations.
_BINDING_CASES = [
    (31337, "0x5FbDB2315678afecb367f032d93F642f64180aa3", bytes([1]) * 32,
     "0x70997970C51812dc3A010C7d01b50e0d17dc79C8", 0x44),
    (1, "0x000000000000000000000000000000000000dEaD", bytes(range(32)),
     "0x0000000000000000000000000000000000000001", 0x55),
    (8453, "0xFFfFfFffFFfffFFfFFfFFFFFffFFFffffFfFFFfF", b"\xff" * 32,
     "0xFFfFfFffFFfffFFfFFfFFFFFffFFFffffFfFFFfF", 0x66),
]


def _binding_cases() -> list[dict]:
    cases = []
    for chain_id, registry, node_key, operator, key_byte in _BINDING_CASES:
        att = BindingAttestation(chain_id, registry, node_key, operator)
        cases.append({"chain_id": chain_id, "registry": registry, "node_key": "0x" + node_key.hex(),
                      "operator": operator, **_signed(att, binding_digest, sign_binding, key_byte)})
    return cases


def _signed(message: Any, digest: Any, sign: Any, key_byte: int) -> dict:
    """The hashes of one typed message and its signature by the key `key_byte` * 32."""
    private_key = bytes([key_byte]) * 32
    return {
        "domain_separator": "0x" + domain_separator(message).hex(),
        "struct_hash": "0x" + struct_hash(message).hex(),
        "digest": "0x" + digest(message).hex(),
        "signer_private_key": "0x" + private_key.hex(),
        "signer": Account.from_key(private_key).address,
        "signature": "0x" + sign(private_key, message).hex(),
    }


def build() -> dict:
    """The vector document: inputs and expected hashes/signatures for each case."""
    cases = []
    for chain_id, registry, node_key, receipt_id, amount, key_byte in _CASES:
        req = SlashRequest(chain_id, registry, node_key, receipt_id, amount)
        cases.append({"chain_id": chain_id, "registry": registry, "node_key": "0x" + node_key.hex(),
                      "receipt_id": "0x" + receipt_id.hex(), "amount": str(amount),
                      **_signed(req, slash_digest, sign_slash, key_byte)})
    return {
        "description": "EIP-712 Slash authorisations and Binding attestations verified by NodeRegistry "
        "(protocol/eip712.py); 0x-prefixed because Solidity tests read this file; amount is a decimal "
        "string (uint256)",
        "domain": {"name": "Corolla NodeRegistry", "version": "1"},
        "type": SLASH_TYPE,
        "slash": cases,
        "binding_type": BINDING_TYPE,
        "binding": _binding_cases(),
    }


def render() -> str:
    return json.dumps(build(), indent=2) + "\n"


if __name__ == "__main__":
    VECTORS.parent.mkdir(parents=True, exist_ok=True)
    VECTORS.write_text(render())
    print(f"wrote {VECTORS}")
