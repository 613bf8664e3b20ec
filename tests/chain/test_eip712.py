"""protocol/eip712.py against its checked-in vectors (which contracts/test also asserts)."""

from __future__ import annotations

import json

import pytest
from eth_account import Account

from protocol.eip712 import (
    BindingAttestation,
    SlashRequest,
    binding_digest,
    recover_binding_signer,
    recover_slash_signer,
    sign_binding,
    sign_slash,
    slash_digest,
)
from tests.chain.eip712_vectors import VECTORS, build


def test_vector_file_matches_protocol_code() -> None:
    assert json.loads(VECTORS.read_text()) == build(), "run `python -m tests.chain.eip712_vectors`"


def test_vector_signatures_recover_their_signer() -> None:
    for case in json.loads(VECTORS.read_text())["slash"]:
        req = SlashRequest(case["chain_id"], case["registry"], bytes.fromhex(case["node_key"][2:]),
                           bytes.fromhex(case["receipt_id"][2:]), int(case["amount"]))
        assert "0x" + slash_digest(req).hex() == case["digest"]
        assert recover_slash_signer(req, bytes.fromhex(case["signature"][2:])) == case["signer"]


def test_binding_vector_signatures_recover_their_signer() -> None:
    cases = json.loads(VECTORS.read_text())["binding"]
    assert len(cases) == 3
    for case in cases:
        att = BindingAttestation(case["chain_id"], case["registry"], bytes.fromhex(case["node_key"][2:]),
                                 case["operator"])
        assert "0x" + binding_digest(att).hex() == case["digest"]
        assert recover_binding_signer(att, bytes.fromhex(case["signature"][2:])) == case["signer"]


def test_binding_digest_binds_every_field_and_differs_from_slash() -> None:
    base = BindingAttestation(1, "0x000000000000000000000000000000000000dEaD", b"\x01" * 32,
                              "0x0000000000000000000000000000000000000001")
    variants = [
        BindingAttestation(2, base.registry, base.node_key, base.operator),
        BindingAttestation(1, "0x000000000000000000000000000000000000bEEF", base.node_key, base.operator),
        BindingAttestation(1, base.registry, b"\x03" * 32, base.operator),
        BindingAttestation(1, base.registry, base.node_key, "0x0000000000000000000000000000000000000002"),
    ]
    assert len({binding_digest(v) for v in variants} | {binding_digest(base)}) == 5
    slash = SlashRequest(1, base.registry, base.node_key, bytes(32), 1)
    assert slash_digest(slash) != binding_digest(base)
    key = Account.create()
    sig = sign_binding(key.key, base)
    assert recover_binding_signer(base, sig) == key.address
    assert recover_binding_signer(variants[3], sig) != key.address
    with pytest.raises(ValueError):
        BindingAttestation(1, base.registry, b"\x01" * 31, base.operator)
    with pytest.raises(ValueError):
        BindingAttestation(1, base.registry, base.node_key, "0x1234")


def test_digest_binds_every_field() -> None:
    base = SlashRequest(1, "0x000000000000000000000000000000000000dEaD", b"\x01" * 32, b"\x02" * 32, 5)
    variants = [
        SlashRequest(2, base.registry, base.node_key, base.receipt_id, base.amount),
        SlashRequest(1, "0x000000000000000000000000000000000000bEEF", base.node_key, base.receipt_id, base.amount),
        SlashRequest(1, base.registry, b"\x03" * 32, base.receipt_id, base.amount),
        SlashRequest(1, base.registry, base.node_key, b"\x03" * 32, base.amount),
        SlashRequest(1, base.registry, base.node_key, base.receipt_id, 6),
    ]
    digests = {slash_digest(v) for v in variants} | {slash_digest(base)}
    assert len(digests) == 6
    key = Account.create()
    sig = sign_slash(key.key, base)
    assert recover_slash_signer(base, sig) == key.address
    assert recover_slash_signer(variants[4], sig) != key.address


def test_bad_inputs_are_rejected() -> None:
    with pytest.raises(ValueError):
        SlashRequest(1, "0x000000000000000000000000000000000000dEaD", b"\x01" * 31, b"\x02" * 32, 5)
    with pytest.raises(ValueError):
        SlashRequest(1, "0x000000000000000000000000000000000000dEaD", b"\x01" * 32, b"\x02" * 32, -1)
