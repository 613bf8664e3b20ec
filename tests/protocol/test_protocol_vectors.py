"""Every checked-in vector in protocol/vectors/ is reproduced by the Python implementation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from protocol.binding import Binding, binding_message, verify_binding
from protocol.hashing import tensor_digest_raw
from protocol.merkle import (
    BalanceTree,
    balance_leaf,
    block_proof,
    block_root,
    verify_balance_proof,
    verify_block_proof,
)
from protocol.receipts import Receipt, SignedReceipt, ack_message
from protocol.request_auth import authenticate_request, request_message
from protocol.tensor_hash import tensor_digest
from protocol.tickets import SignedTicket, Ticket
from protocol.vectors import generate
from protocol.verdicts import SignedVerdict, Verdict

VECTORS = Path(generate.__file__).parent


def load(name: str) -> dict:
    return json.loads((VECTORS / name).read_text())


def test_vector_files_are_up_to_date():
    assert generate.main(["--check"]) == 0


def test_vector_keys_derive_from_their_seeds():
    for key in load("receipts.json")["keys"]:
        assert generate.Identity.from_private_bytes(bytes.fromhex(key["seed"])).public_hex == key["public_key"]


@pytest.mark.parametrize("vec", load("tensor_digest.json")["vectors"], ids=lambda v: v["name"])
def test_tensor_digest_vectors(vec):
    raw = bytes.fromhex(vec["raw"])
    assert tensor_digest_raw(vec["dtype"], tuple(vec["shape"]), raw).hex() == vec["digest"]
    dtype = getattr(torch, vec["dtype"])
    # Rebuild the tensor from its raw bytes and hash it through the torch path.
    t = torch.frombuffer(bytearray(raw), dtype=torch.uint8).view(dtype).reshape(vec["shape"]) if raw else \
        torch.zeros(vec["shape"], dtype=dtype)
    assert tensor_digest(t).hex() == vec["digest"]


def test_tensor_digest_is_layout_independent_and_binds_dtype_and_shape():
    t = torch.randn(3, 4)
    assert tensor_digest(t.t().contiguous().t()) == tensor_digest(t)  # non-contiguous view, same values
    assert tensor_digest(t.reshape(4, 3)) != tensor_digest(t)
    assert tensor_digest(t.to(torch.float64)) != tensor_digest(t)
    b = t.to(torch.bfloat16)
    assert tensor_digest(b) == tensor_digest_raw("bfloat16", (3, 4), b.view(torch.int16).numpy().tobytes())


@pytest.mark.parametrize("vec", load("receipts.json")["vectors"], ids=lambda v: v["name"])
def test_receipt_vectors(vec):
    r = Receipt.from_json(vec["receipt"])
    assert r.encode().hex() == vec["encoding"]
    assert Receipt.decode(bytes.fromhex(vec["encoding"])) == r
    assert r.receipt_id().hex() == vec["id"]
    assert ack_message(r.receipt_id()).hex() == vec["ack_message"]
    signed = SignedReceipt.from_bytes(bytes.fromhex(vec["signed_bytes"]))
    assert signed.receipt == r
    assert signed.node_signature.hex() == vec["node_signature"]
    assert signed.client_signature.hex() == vec["client_signature"]
    assert signed.verify_node() and signed.verify_client()
    assert signed.to_json() == vec["signed_json"]
    assert r.sign(generate.NODE).node_signature.hex() == vec["node_signature"]  # Ed25519 is deterministic


@pytest.mark.parametrize("vec", load("tickets.json")["vectors"], ids=lambda v: v["name"])
def test_ticket_vectors(vec):
    t = Ticket.from_json(vec["ticket"])
    assert t.encode().hex() == vec["encoding"]
    s = SignedTicket.from_bytes(bytes.fromhex(vec["signed_bytes"]))
    assert s.ticket == t and s.signature.hex() == vec["signature"]
    assert s.verify(generate.LEDGER.public_key)


@pytest.mark.parametrize("vec", load("verdicts.json")["vectors"], ids=lambda v: v["name"])
def test_verdict_vectors(vec):
    v = Verdict.from_json(vec["verdict"])
    assert v.encode().hex() == vec["encoding"]
    assert v.verdict_id().hex() == vec["id"]
    s = SignedVerdict.from_bytes(bytes.fromhex(vec["signed_bytes"]))
    assert s.verdict == v and s.signature.hex() == vec["signature"] and s.verify()


def test_binding_vector():
    vec = load("binding.json")
    b = Binding.from_json(vec["binding"])
    assert binding_message(b.ed25519_key, b.evm_address).hex() == vec["message"]
    assert b.evm_address == vec["evm_address"]
    assert verify_binding(b)


def test_request_auth_vector():
    vec = load("request_auth.json")
    body = bytes.fromhex(vec["body"])
    msg = request_message(vec["method"], vec["path"], vec["timestamp_ms"], bytes.fromhex(vec["nonce"]), body)
    assert msg.hex() == vec["message"]
    auth = authenticate_request(vec["headers"], vec["method"], vec["path"], body, now_ms=vec["timestamp_ms"])
    assert auth.public_key == generate.NODE.public_key
    assert auth.nonce.hex() == vec["nonce"]


@pytest.mark.parametrize("tree", load("block_merkle.json")["trees"], ids=lambda t: f"n{t['n_leaves']}")
def test_block_merkle_vectors(tree):
    leaves = [bytes.fromhex(x) for x in tree["leaves"]]
    root = block_root(leaves)
    assert root.hex() == tree["root"]
    for i, proof in enumerate(tree["proofs"]):
        assert [p.hex() for p in block_proof(leaves, i)] == proof
        assert verify_block_proof(leaves[i], i, len(leaves), [bytes.fromhex(p) for p in proof], root)


def test_balance_tree_vectors():
    vec = load("balance_tree.json")
    root = bytes.fromhex(vec["root"][2:])
    tree = BalanceTree([(e["account"], e["cumulative"]) for e in vec["entries"]])
    assert tree.root == root
    for e in vec["entries"]:
        assert "0x" + balance_leaf(e["account"], e["cumulative"]).hex() == e["leaf"]
        proof = [bytes.fromhex(p[2:]) for p in e["proof"]]
        assert ["0x" + p.hex() for p in tree.proof(e["account"])] == e["proof"]
        assert verify_balance_proof(e["account"], e["cumulative"], proof, root)
        assert not verify_balance_proof(e["account"], e["cumulative"] + 1, proof, root)
    single = vec["single"]
    assert "0x" + BalanceTree([(single["account"], single["cumulative"])]).root.hex() == single["root"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.int8,
                                   torch.bool, torch.float8_e4m3fn, torch.complex64])
def test_tensor_digest_hashes_the_raw_bytes_of_every_dtype(dtype):
    t = (torch.randn(2, 3, 5) * 4).to(dtype)
    raw = t.reshape(-1).view(torch.uint8).numpy().tobytes()
    assert tensor_digest(t) == tensor_digest_raw(str(dtype).removeprefix("torch."), (2, 3, 5), raw)
    assert tensor_digest(t.transpose(0, 2).contiguous().transpose(0, 2)) == tensor_digest(t)
    if dtype.is_floating_point:
        assert tensor_digest(t.clone().requires_grad_(True)) == tensor_digest(t)
