"""Round trips, tampering and domain separation of every signed structure."""

from __future__ import annotations

import dataclasses

import pytest

from protocol.binding import Binding, make_binding, verify_binding
from protocol.identity import Identity, verify_signature
from protocol.receipts import Kind, Receipt, SignedReceipt
from protocol.tickets import ANY_NODE, SignedTicket, Ticket
from protocol.vectors.generate import CLIENT, LEDGER, NODE, VERIFIER, receipt_fixture, seed
from protocol.verdicts import Reason, Result, SignedVerdict, Verdict

NOW = 1_795_000_000_000


def _tampered(value):
    if isinstance(value, Kind):
        return Kind.FORWARD if value != Kind.FORWARD else Kind.BACKWARD
    if isinstance(value, bytes):
        return bytes([value[0] ^ 1]) + value[1:]
    if isinstance(value, float):
        return value + 1.0
    return value + 1


def _ticket(node_key=ANY_NODE, expiry=NOW + 60_000) -> SignedTicket:
    return Ticket(b"\x07" * 32, CLIENT.public_key, node_key, 500, expiry, LEDGER.public_key).sign(LEDGER)


def _verdict() -> SignedVerdict:
    return Verdict(b"\x01" * 32, VERIFIER.public_key, 2, Result.FAIL, Reason.OUTPUT_MISMATCH,
                   b"\x02" * 32, 1e-4, 0.5, NOW).sign(VERIFIER)


def test_receipt_round_trips_through_bytes_and_json():
    signed = receipt_fixture().sign(NODE)
    assert SignedReceipt.from_bytes(signed.to_bytes()) == signed
    assert SignedReceipt.from_json(signed.to_json()) == signed
    acked = signed.countersign(CLIENT)
    assert SignedReceipt.from_bytes(acked.to_bytes()) == acked
    assert SignedReceipt.from_json(acked.to_json()) == acked
    assert acked.id == signed.id and acked.verify_client() and not signed.verify_client()


@pytest.mark.parametrize("name", [f.name for f in dataclasses.fields(Receipt)])
def test_tampering_any_receipt_field_breaks_both_signatures(name):
    acked = receipt_fixture(block_end=5).sign(NODE).countersign(CLIENT)
    changed = dataclasses.replace(acked.receipt, **{name: _tampered(getattr(acked.receipt, name))})
    forged = SignedReceipt(changed, acked.node_signature, acked.client_signature)
    assert not forged.verify_node()
    assert not forged.verify_client()
    assert forged.id != acked.id


def test_receipt_signature_by_another_key_is_rejected():
    r = receipt_fixture()
    impostor = SignedReceipt(r, CLIENT.sign(r.encode()))
    assert not impostor.verify_node()
    with pytest.raises(ValueError, match="node_key"):
        r.sign(CLIENT)
    with pytest.raises(ValueError, match="client_key"):
        r.sign(NODE).countersign(NODE)


def test_json_with_wrong_id_is_rejected():
    d = receipt_fixture().sign(NODE).to_json()
    d["id"] = "00" * 32
    with pytest.raises(ValueError, match="id does not match"):
        SignedReceipt.from_json(d)


def test_receipt_rejects_out_of_range_fields():
    with pytest.raises(ValueError, match="kind"):
        receipt_fixture(kind=9)
    with pytest.raises(ValueError, match="empty block span"):
        receipt_fixture(block_start=3, block_end=3)
    with pytest.raises(ValueError, match="u32"):
        receipt_fixture(tokens=2**32)
    with pytest.raises(ValueError, match="32 bytes"):
        receipt_fixture(model=b"short")


def test_signatures_do_not_cross_domains():
    """A node signature over a receipt never verifies as a ticket, verdict or ack, and vice versa."""
    receipt = receipt_fixture().sign(NODE)
    ticket = _ticket()
    verdict = _verdict()
    messages = [receipt.receipt.encode(), ticket.ticket.encode(), verdict.verdict.encode()]
    tags = [m[:16] for m in messages]
    assert len(set(tags)) == 3
    # Same signer signs all three kinds; no signature verifies for another kind's bytes.
    one_key = Identity.from_private_bytes(seed("cross"))
    sigs = [one_key.sign(m) for m in messages]
    for i, sig in enumerate(sigs):
        for j, msg in enumerate(messages):
            assert verify_signature(one_key.public_key, msg, sig) == (i == j)
    # And the structures' own parsers refuse each other's encodings.
    with pytest.raises(ValueError):
        Receipt.decode(ticket.ticket.encode())
    with pytest.raises(ValueError):
        SignedTicket.from_bytes(verdict.to_bytes())
    with pytest.raises(ValueError):
        SignedVerdict.from_bytes(receipt.to_bytes())


def test_ticket_checks_name_the_problem():
    good = _ticket(node_key=NODE.public_key)
    assert good.check_for(CLIENT.public_key, NODE.public_key, NOW, LEDGER.public_key) is None
    assert _ticket().check_for(CLIENT.public_key, VERIFIER.public_key, NOW, LEDGER.public_key) is None
    assert good.check_for(CLIENT.public_key, NODE.public_key, NOW + 60_000, LEDGER.public_key) == "expired"
    assert good.check_for(NODE.public_key, NODE.public_key, NOW, LEDGER.public_key) == "wrong client"
    assert good.check_for(CLIENT.public_key, CLIENT.public_key, NOW, LEDGER.public_key) == "wrong node"
    raised_cap = SignedTicket(dataclasses.replace(good.ticket, cap=10**9), good.signature)
    assert raised_cap.check_for(CLIENT.public_key, NODE.public_key, NOW, LEDGER.public_key) == "forged"
    self_issued = Ticket(b"\x07" * 32, CLIENT.public_key, ANY_NODE, 500, NOW + 1, CLIENT.public_key).sign(CLIENT)
    assert self_issued.check_for(CLIENT.public_key, NODE.public_key, NOW, LEDGER.public_key) == "forged"
    assert SignedTicket.from_json(good.to_json()) == good
    assert SignedTicket.from_bytes(good.to_bytes()) == good


@pytest.mark.parametrize("name", [f.name for f in dataclasses.fields(Ticket)])
def test_tampering_any_ticket_field_breaks_its_signature(name):
    good = _ticket()
    forged = SignedTicket(dataclasses.replace(good.ticket, **{name: _tampered(getattr(good.ticket, name))}),
                          good.signature)
    assert not forged.verify(LEDGER.public_key)


@pytest.mark.parametrize("name", [f.name for f in dataclasses.fields(Verdict) if f.name not in ("result", "reason")])
def test_tampering_any_verdict_field_breaks_its_signature(name):
    good = _verdict()
    assert good.verify()
    forged = SignedVerdict(dataclasses.replace(good.verdict, **{name: _tampered(getattr(good.verdict, name))}),
                           good.signature)
    assert not forged.verify()


def test_flipping_verdict_result_breaks_its_signature_and_json_round_trips():
    good = _verdict()
    flipped = SignedVerdict(dataclasses.replace(good.verdict, result=Result.PASS, reason=Reason.NONE), good.signature)
    assert not flipped.verify()
    assert SignedVerdict.from_json(good.to_json()) == good
    assert SignedVerdict.from_bytes(good.to_bytes()) == good
    bad = good.to_json()
    bad["verdict"]["measured"] = float("nan")
    with pytest.raises(ValueError, match="finite"):
        SignedVerdict.from_json(bad)


def test_binding_needs_both_keys():
    eth_key = seed("evm-test")
    b = make_binding(NODE, eth_key)
    assert verify_binding(b)
    assert Binding.from_json(b.to_json()) == b
    other = make_binding(CLIENT, seed("evm-other"))
    assert not verify_binding(dataclasses.replace(b, evm_signature=other.evm_signature))
    assert not verify_binding(dataclasses.replace(b, ed25519_signature=other.ed25519_signature))
    assert not verify_binding(dataclasses.replace(b, evm_address=other.evm_address))
    assert not verify_binding(dataclasses.replace(b, ed25519_key=CLIENT.public_key))
    assert not verify_binding(dataclasses.replace(b, evm_signature=b"\xff" * 65))
    with pytest.raises(ValueError, match="checksum"):
        Binding.from_json({**b.to_json(), "evm_address": b.evm_address.lower()})


def test_binding_evm_signature_is_what_eth_account_personal_sign_produces():
    from eth_account import Account
    from eth_account.messages import encode_defunct

    b = make_binding(NODE, seed("evm-test"))
    expected = Account.sign_message(encode_defunct(primitive=b.message()), private_key=seed("evm-test"))
    assert b.evm_signature == bytes(expected.signature)
    assert Account.recover_message(encode_defunct(primitive=b.message()), signature=b.evm_signature) == b.evm_address
