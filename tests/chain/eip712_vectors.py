"""Generate protocol/vectors/eip712.json from protocol/eip712.py.

Run `python -m tests.chain.eip712_vectors` to rewrite the file; tests/chain/test_eip712.py
checks the checked-in file equals this output, and contracts/test/Vectors.t.sol checks the
contract computes the same digests and accepts the same signatures.
"""

from __future__ import annotations

import json
from pathlib import Path

from eth_account import Account

from protocol.eip712 import SLASH_TYPE, SlashRequest, domain_separator, sign_slash, slash_digest, struct_hash

VECTORS = Path(__file__).resolve().parents[2] / "protocol" / "vectors" / "eip712.json"

# (chain id, registry, node key, receipt id, amount, signer key): edge values on purpose.
_CASES = [
    (31337, "0x5FbDB2315678afecb367f032d93F642f64180aa3", bytes([1]) * 32, bytes([2]) * 32, 1, 0x11),
    (1, "0x000000000000000000000000000000000000dEaD", bytes(range(32)), bytes(range(32, 64)), 10**21, 0x22),
    (8453, "0xFFfFfFffFFfffFFfFFfFFFFFffFFFffffFfFFFfF", b"\xff" * 32, b"\x00" * 31 + b"\x01", 2**256 - 1, 0x33),
]


def build() -> dict:
    """The vector document: inputs and expected hashes/signatures for each case."""
    cases = []
    for chain_id, registry, node_key, receipt_id, amount, key_byte in _CASES:
        req = SlashRequest(chain_id, registry, node_key, receipt_id, amount)
        private_key = bytes([key_byte]) * 32
        cases.append(
            {
                "chain_id": chain_id,
                "registry": registry,
                "node_key": "0x" + node_key.hex(),
                "receipt_id": "0x" + receipt_id.hex(),
                "amount": str(amount),
                "domain_separator": "0x" + domain_separator(req).hex(),
                "struct_hash": "0x" + struct_hash(req).hex(),
                "digest": "0x" + slash_digest(req).hex(),
                "signer_private_key": "0x" + private_key.hex(),
                "signer": Account.from_key(private_key).address,
                "signature": "0x" + sign_slash(private_key, req).hex(),
            }
        )
    return {
        "description": "EIP-712 Slash authorisations verified by NodeRegistry (protocol/eip712.py); "
        "0x-prefixed because Solidity tests read this file; amount is a decimal string (uint256)",
        "domain": {"name": "Corolla NodeRegistry", "version": "1"},
        "type": SLASH_TYPE,
        "slash": cases,
    }


def render() -> str:
    return json.dumps(build(), indent=2) + "\n"


if __name__ == "__main__":
    VECTORS.parent.mkdir(parents=True, exist_ok=True)
    VECTORS.write_text(render())
    print(f"wrote {VECTORS}")
