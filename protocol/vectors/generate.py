"""Write (or check) the test vectors of every protocol format into protocol/vectors/*.json.

    python -m protocol.vectors.generate          # rewrite the files
    python -m protocol.vectors.generate --check  # exit 1 if a file would change

Keys come from fixed seeds, Ed25519 and RFC 6979 ECDSA are deterministic, so the output is
byte-for-byte reproducible. Python tests (tests/protocol/) and Solidity tests
(contracts/test/) assert these files; change a format only together with its vectors.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import torch
from eth_utils import to_checksum_address

from protocol.binding import binding_message, make_binding
from protocol.hashing import digest
from protocol.identity import Identity
from protocol.merkle import BalanceTree, balance_leaf, block_proof, block_root
from protocol.receipts import Kind, Receipt, ack_message
from protocol.request_auth import request_message, sign_request
from protocol.tensor_hash import dtype_name, tensor_bytes, tensor_digest
from protocol.tickets import Ticket
from protocol.verdicts import Reason, Result, Verdict

HERE = Path(__file__).parent


def seed(name: str) -> bytes:
    """Deterministic 32-byte secret for vector keys (never use outside vectors/tests)."""
    return hashlib.sha256(b"corolla/vectors/" + name.encode()).digest()


def identity(name: str) -> Identity:
    return Identity.from_private_bytes(seed(name))


def key_json(name: str) -> dict[str, str]:
    return {"name": name, "seed": seed(name).hex(), "public_key": identity(name).public_hex}


NODE, CLIENT, LEDGER, VERIFIER, OPERATOR = (identity(n) for n in ("node", "client", "ledger", "verifier", "operator"))
KEYS = [key_json(n) for n in ("node", "client", "ledger", "verifier", "operator")]


def tensors() -> dict[str, Any]:
    g = torch.Generator().manual_seed(7)
    cases = {
        "float32_2x3": torch.randn(2, 3, generator=g),
        "bfloat16_1x2x4": torch.randn(1, 2, 4, generator=g).to(torch.bfloat16),
        "float16_4": torch.randn(4, generator=g).to(torch.float16),
        "int64_5": torch.arange(-2, 3, dtype=torch.int64),
        "float32_scalar": torch.tensor(1.5),
        "float32_empty_0x4": torch.zeros(0, 4),
    }
    out = []
    for name, t in cases.items():
        out.append({
            "name": name, "dtype": dtype_name(t.dtype), "shape": list(t.shape),
            "raw": bytes(tensor_bytes(t)).hex(), "digest": tensor_digest(t).hex(),
        })
    return {"description": "digest(COROLLA/tensor/v1 || u8 len(dtype) || dtype || u8 ndim || u32 dims || raw LE bytes)",
            "hash": "blake3", "vectors": out}


def receipt_fixture(**overrides: Any) -> Receipt:
    fields: dict[str, Any] = dict(
        node_key=NODE.public_key, client_key=CLIENT.public_key, model=digest(b"model"),
        block_start=2, block_end=6, kind=Kind.INFERENCE, session_id=bytes(range(16)), step=7,
        batch=1, tokens=1, input_hash=digest(b"in"), output_hash=digest(b"out"),
        blocks_root=digest(b"root"), request_ref=digest(b"request"), timestamp_ms=1_795_000_000_000,
    )
    fields.update(overrides)
    return Receipt(**fields)


def receipts() -> dict[str, Any]:
    out = []
    for name, r in {
        "inference_free": receipt_fixture(),
        "forward_paid": receipt_fixture(kind=Kind.FORWARD, block_start=0, block_end=4, step=0, batch=4,
                                        tokens=512, ticket_id=digest(b"ticket"), price=2048),
        "backward": receipt_fixture(kind=Kind.BACKWARD, step=3, batch=2, tokens=256),
    }.items():
        signed = r.sign(NODE).countersign(CLIENT)
        out.append({
            "name": name, "receipt": r.to_json(), "encoding": r.encode().hex(), "id": signed.id.hex(),
            "node_signature": signed.node_signature.hex(), "ack_message": ack_message(signed.id).hex(),
            "client_signature": (signed.client_signature or b"").hex(),
            "signed_bytes": signed.to_bytes().hex(), "signed_json": signed.to_json(),
        })
    return {"keys": KEYS, "vectors": out}


def tickets() -> dict[str, Any]:
    out = []
    for name, node_key in {"any_node": bytes(32), "one_node": NODE.public_key}.items():
        t = Ticket(digest(b"ticket/" + name.encode()), CLIENT.public_key, node_key, 10_000,
                   1_795_000_600_000, LEDGER.public_key)
        s = t.sign(LEDGER)
        out.append({"name": name, "ticket": t.to_json(), "encoding": t.encode().hex(),
                    "signature": s.signature.hex(), "signed_bytes": s.to_bytes().hex()})
    return {"keys": KEYS, "vectors": out}


def verdicts() -> dict[str, Any]:
    rid = receipt_fixture().receipt_id()
    out = []
    for name, (result, reason, measured) in {
        "pass": (Result.PASS, Reason.NONE, 1.25e-7),
        "fail_output": (Result.FAIL, Reason.OUTPUT_MISMATCH, 0.75),
        "unreachable": (Result.UNREACHABLE, Reason.UNREACHABLE, 0.0),
    }.items():
        v = Verdict(rid, VERIFIER.public_key, 3, result, reason, digest(b"openings"), 1e-4, measured,
                    1_795_000_100_000)
        s = v.sign(VERIFIER)
        out.append({"name": name, "verdict": v.to_json(), "encoding": v.encode().hex(), "id": s.id.hex(),
                    "signature": s.signature.hex(), "signed_bytes": s.to_bytes().hex()})
    return {"keys": KEYS, "vectors": out}


def binding() -> dict[str, Any]:
    eth_key = seed("evm-operator")
    b = make_binding(OPERATOR, eth_key)
    return {"keys": KEYS, "evm_private_key": "0x" + eth_key.hex(), "evm_address": b.evm_address,
            "message": binding_message(OPERATOR.public_key, b.evm_address).hex(), "binding": b.to_json()}


def request_auth() -> dict[str, Any]:
    body = b'{"receipts":[]}'
    nonce = bytes(range(16))
    headers = sign_request(NODE, "POST", "/v1/receipts", body, now_ms=1_795_000_000_123, nonce=nonce)
    return {"keys": KEYS, "method": "POST", "path": "/v1/receipts", "body": body.hex(),
            "timestamp_ms": 1_795_000_000_123, "nonce": nonce.hex(),
            "message": request_message("POST", "/v1/receipts", 1_795_000_000_123, nonce, body).hex(),
            "headers": headers}


def block_merkle() -> dict[str, Any]:
    out = []
    for n in (1, 2, 3, 5, 8):
        leaves = [digest(b"block-output/%d" % i) for i in range(n)]
        out.append({"n_leaves": n, "leaves": [x.hex() for x in leaves], "root": block_root(leaves).hex(),
                    "proofs": [[p.hex() for p in block_proof(leaves, i)] for i in range(n)]})
    return {"description": "leaf node = H(0x00||leaf), inner = H(0x01||l||r), odd node carried up", "trees": out}


def balance_tree() -> dict[str, Any]:
    entries = [("0x" + hashlib.sha256(b"account/%d" % i).digest()[:20].hex(), c)
               for i, c in enumerate([1_000_000_000_000, 5, 0, 123_456_789, 42])]
    tree = BalanceTree(entries)
    return {
        "description": "OpenZeppelin MerkleProof: leaf = keccak256(keccak256(abi.encode(address,uint256))), "
                       "sorted-pair inner nodes; 0x-prefixed because Solidity tests read this file",
        "root": "0x" + tree.root.hex(),
        "entries": [{"account": a, "cumulative": c, "leaf": "0x" + balance_leaf(a, c).hex(),
                     "proof": ["0x" + p.hex() for p in tree.proof(a)]}
                    for a, c in ((to_checksum_address(a), c) for a, c in entries)],
        "single": {"account": entries[0][0], "cumulative": entries[0][1],
                   "root": "0x" + BalanceTree(entries[:1]).root.hex()},
    }


FILES = {
    "tensor_digest.json": tensors, "receipts.json": receipts, "tickets.json": tickets,
    "verdicts.json": verdicts, "binding.json": binding, "request_auth.json": request_auth,
    "block_merkle.json": block_merkle, "balance_tree.json": balance_tree,
}


def render(make: Any) -> str:
    return json.dumps(make(), indent=1, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="compare instead of writing; exit 1 on any difference")
    args = p.parse_args(argv)
    stale = []
    for name, make in FILES.items():
        text, path = render(make), HERE / name
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
        else:
            path.write_text(text)
    if stale:
        print("stale vectors: " + ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
