"""Node-side ticket check: valid tickets pay, every bad ticket is served free with a reason."""

from __future__ import annotations

import os
import threading

import pytest

from node.ticket_check import TicketSpending, check_ticket
from protocol.identity import Identity
from protocol.receipts import ZERO32
from protocol.tickets import ANY_NODE, Ticket

NOW = 1_800_000_000_000
LEDGER = Identity.from_private_bytes(b"L" * 32)
CLIENT = Identity.from_private_bytes(b"C" * 32)
NODE = Identity.from_private_bytes(b"N" * 32)


def make_ticket(*, cap: int = 100, expiry_ms: int = NOW + 60_000, client: bytes = CLIENT.public_key,
                node: bytes = ANY_NODE, ledger: Identity = LEDGER) -> bytes:
    ticket = Ticket(os.urandom(32), client, node, cap, expiry_ms, ledger.public_key)
    return ticket.sign(ledger).to_bytes()


def check(ticket: bytes, spending: TicketSpending | None = None, **overrides):
    args = dict(trusted_ledger_keys={LEDGER.public_key}, client_key=CLIENT.public_key,
                node_key=NODE.public_key, now_ms=NOW, tokens=1, spending=spending or TicketSpending())
    args.update(overrides)
    return check_ticket(ticket, **args)


def test_valid_ticket_pays_the_nodes_price_and_reserves_the_charge():
    spending = TicketSpending()
    ticket = make_ticket()
    decision = check(ticket, spending, tokens=4, min_price_per_token=2)
    assert decision.paid and decision.price_per_token == 2 and decision.charge == 8
    assert decision.ticket_id == ticket[17:49] and decision.message == ""
    assert spending.charged(decision.ticket_id) == 8


def test_client_bid_above_the_minimum_sets_the_price():
    decision = check(make_ticket(), tokens=3, bid_per_token=5, min_price_per_token=2)
    assert decision.price_per_token == 5 and decision.charge == 15
    assert decision.priority_price == 5.0


def test_no_ticket_is_free_without_complaint():
    decision = check(b"")
    assert not decision.paid and decision.message == "" and decision.ticket_id == ZERO32


@pytest.mark.parametrize("case, expected", [
    ("forged", "not signed by a ledger this node trusts"),
    ("tampered", "not signed by a ledger this node trusts"),
    ("expired", "expired"),
    ("other client", "another client"),
    ("other node", "another node"),
    ("malformed", "malformed"),
])
def test_bad_tickets_are_served_free_with_a_clear_message(case, expected):
    mallory = Identity.from_private_bytes(b"M" * 32)
    ticket = {
        "forged": lambda: make_ticket(ledger=mallory),
        "tampered": lambda: _raise_cap(make_ticket(cap=1)),
        "expired": lambda: make_ticket(expiry_ms=NOW),
        "other client": lambda: make_ticket(client=mallory.public_key),
        "other node": lambda: make_ticket(node=mallory.public_key),
        "malformed": lambda: b"\x01" * 40,
    }[case]()
    spending = TicketSpending()
    decision = check(ticket, spending)
    assert not decision.paid and decision.charge == 0 and decision.ticket_id == ZERO32
    assert expected in decision.message and decision.message.endswith("served as free")


def _raise_cap(signed: bytes) -> bytes:
    """Flip the cap field of a signed ticket without re-signing it."""
    cap_offset = len(b"COROLLA/ticket/v1") + 96
    return signed[:cap_offset] + (10**9).to_bytes(8, "big") + signed[cap_offset + 8:]


def test_node_bound_ticket_pays_on_that_node():
    assert check(make_ticket(node=NODE.public_key)).paid


def test_exhausted_ticket_turns_free_and_says_how_much_was_charged():
    spending = TicketSpending()
    ticket = make_ticket(cap=10)
    decisions = [check(ticket, spending, tokens=4) for _ in range(3)]
    assert [d.paid for d in decisions] == [True, True, False]
    assert "8 of its cap 10" in decisions[2].message
    assert spending.charged(decisions[0].ticket_id) == 8


def test_refund_frees_the_reservation():
    spending = TicketSpending()
    ticket = make_ticket(cap=4)
    first = check(ticket, spending, tokens=4)
    assert not check(ticket, spending, tokens=1).paid
    spending.refund(first.ticket_id, first.charge)
    assert check(ticket, spending, tokens=4).paid


def test_concurrent_requests_never_charge_past_the_cap():
    spending = TicketSpending()
    ticket = make_ticket(cap=1000)
    paid = []
    lock = threading.Lock()

    def hammer() -> None:
        for _ in range(100):
            d = check(ticket, spending, tokens=3)
            with lock:
                paid.append(d.charge)

    threads = [threading.Thread(target=hammer) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(paid) == 999  # 333 requests of 3 fit under 1000, the rest ran free
    assert spending.charged(ticket[17:49]) == 999


def test_forget_expired_drops_only_expired_counters():
    spending = TicketSpending()
    spending.record(b"a" * 32, 5, expiry_ms=NOW)
    spending.record(b"b" * 32, 7, expiry_ms=NOW + 1)
    assert spending.forget_expired(NOW) == 1
    assert spending.charged(b"a" * 32) == 0 and spending.charged(b"b" * 32) == 7


def test_ticket_gate_decides_with_the_nodes_key_price_and_clock():
    from node.ticket_check import TicketGate

    gate = TicketGate(NODE.public_key, frozenset({LEDGER.public_key}), min_price_per_token=3,
                      clock_ms=lambda: NOW)
    ticket = make_ticket(cap=10, node=NODE.public_key)
    first = gate.decide(ticket, CLIENT.public_key, tokens=3)
    assert first.paid and first.charge == 9
    refused = gate.decide(ticket, CLIENT.public_key, tokens=1)
    assert not refused.paid and "exhausted" in refused.message
    gate.refund(first)
    assert gate.decide(ticket, CLIENT.public_key, tokens=1).paid
    assert (gate.paid, gate.refused) == (2, 1)
    assert not gate.decide(ticket, NODE.public_key, tokens=1).paid  # ticket is not the node's own
