"""SpendingPolicy against a real ledger process: escrow, attach, track, renew, stop at budget;
and the ledger side of tickets: receipts carry them and an epoch settles at most the cap."""

from __future__ import annotations

import time

import pytest
from tests_priority_helpers import receipt_for, submit

from client.spending import FreePolicy, SpendingPolicy
from node.ticket_check import TicketGate, TicketSpending, check_ticket
from protocol.identity import Identity
from protocol.tickets import SignedTicket


def test_policy_escrows_a_ticket_that_a_node_accepts(ledger):
    client = ledger.rich[0]
    policy = SpendingPolicy(ledger.url, client, budget=100, ticket_cap=40, bid_per_token=2)
    offer = policy.offer()
    assert offer.paying and offer.bid_per_token == 2
    signed = SignedTicket.from_bytes(offer.ticket)
    assert signed.verify(ledger.key) and signed.ticket.cap == 40
    account = ledger.account(client)
    assert account["escrow"] == 40 and account["balance"] == 1000 - 40
    node = Identity.generate()
    decision = check_ticket(offer.ticket, trusted_ledger_keys={ledger.key}, client_key=client.public_key,
                            node_key=node.public_key, now_ms=int(time.time() * 1000), tokens=3,
                            spending=TicketSpending(), bid_per_token=offer.bid_per_token)
    assert decision.paid and decision.charge == 6
    assert policy.offer().ticket == offer.ticket  # same ticket until it is used up
    policy.close()


def test_policy_tracks_receipts_renews_and_falls_back_to_free_at_budget(ledger):
    client, node = ledger.rich[1], Identity.generate()
    policy = SpendingPolicy(ledger.url, client, budget=25, ticket_cap=10)
    seen_tickets = []
    for step in range(40):
        offer = policy.offer()
        if not offer.paying:
            break
        tid = SignedTicket.from_bytes(offer.ticket).id
        if tid not in seen_tickets:
            seen_tickets.append(tid)
        receipt = receipt_for(ledger, node, client, tid, price=5, step=step)
        policy.record_receipt(receipt.receipt)
        policy.record_receipt(receipt.receipt)  # the same receipt twice counts once
    assert len(seen_tickets) == 3  # caps 10, 10, then the 5 left of the budget
    assert policy.spent == 25 and policy.remaining == 0
    assert not policy.offer().paying and policy.last_error == "budget used"
    assert [e.price for e in policy.history] == [5] * 5
    assert ledger.account(client)["escrow"] == 25
    policy.close()


def test_a_ticket_refused_after_use_is_renewed_but_a_never_honoured_one_is_kept(ledger):
    client, node = ledger.rich[2], Identity.generate()
    policy = SpendingPolicy(ledger.url, client, budget=50, ticket_cap=20)
    offer = policy.offer()
    tid = SignedTicket.from_bytes(offer.ticket).id
    free_receipt = receipt_for(ledger, node, client, bytes(32), price=0)
    policy.observe(offer, free_receipt.receipt)  # never honoured: maybe the node takes no tickets
    assert policy.offer().ticket == offer.ticket
    policy.observe(offer, receipt_for(ledger, node, client, tid, price=4, step=1).receipt)
    policy.observe(offer, receipt_for(ledger, node, client, bytes(32), price=0, step=2).receipt)
    second = policy.offer().ticket
    assert second and second != offer.ticket
    assert policy.spent == 4 and policy.committed() == 4 + 20  # old ticket counts at what it spent
    policy.close()


def test_client_without_credits_runs_free_with_the_ledgers_reason(ledger):
    policy = SpendingPolicy(ledger.url, Identity.generate(), budget=10)
    assert not policy.offer().paying
    assert "insufficient credits" in policy.last_error
    policy.close()


def test_ledger_outage_means_free_not_failure():
    policy = SpendingPolicy("http://127.0.0.1:9", Identity.generate(), budget=10)
    assert policy.offer().ticket == b"" and policy.last_error
    policy.close()


def test_paying_client_weighs_nodes_by_speed_only(ledger):
    free, paying = FreePolicy(), SpendingPolicy(ledger.url, ledger.rich[3], budget=10)
    fast_busy, slow_idle = (100.0, 20.0), (40.0, 0.0)  # (tokens/s, queued tasks)
    assert free.node_cost(*slow_idle) < free.node_cost(*fast_busy)
    assert paying.node_cost(*fast_busy) < paying.node_cost(*slow_idle)
    paying.close()


def test_receipts_carry_the_ticket_and_settle_at_the_epoch(ledger):
    client, node = ledger.rich[4], Identity.generate()
    policy = SpendingPolicy(ledger.url, client, budget=30, ticket_cap=30)
    gate = TicketGate(node.public_key, frozenset({ledger.key}), min_price_per_token=2)
    receipts = []
    for step in range(5):
        offer = policy.offer()
        decision = gate.decide(offer.ticket, client.public_key, tokens=3)
        assert decision.paid
        receipts.append(receipt_for(ledger, node, client, decision.ticket_id, decision.charge, tokens=3, step=step))
        policy.record_receipt(receipts[-1].receipt)
    submit(ledger, node, receipts)
    before = ledger.account(client)
    ledger.close_epoch()
    node_after, client_after = ledger.account(node), ledger.account(client)
    assert policy.spent == 30
    assert node_after["balance"] >= 30  # ticket income (plus minted work)
    history = ledger.get(f"/v1/accounts/{node.public_hex}/history")
    assert sum(e["delta"] for e in history if e["kind"] == "spend") == 30
    assert client_after["escrow"] == before["escrow"] - 30
    policy.close()


def test_an_any_node_ticket_spent_on_two_nodes_settles_at_most_its_cap(ledger):
    client = ledger.rich[5]
    nodes = [Identity.generate(), Identity.generate()]
    policy = SpendingPolicy(ledger.url, client, budget=20, ticket_cap=20)
    ticket = policy.offer().ticket
    tid = SignedTicket.from_bytes(ticket).id
    by_node = {}
    for node in nodes:  # each node only knows its own counter: both serve the full cap
        gate = TicketGate(node.public_key, frozenset({ledger.key}), min_price_per_token=1)
        decisions = [gate.decide(ticket, client.public_key, tokens=5) for _ in range(5)]
        assert [d.paid for d in decisions] == [True] * 4 + [False]
        by_node[node] = [receipt_for(ledger, node, client, tid, d.charge, tokens=5, step=i)
                         for i, d in enumerate(decisions[:4])]
    for node, receipts in by_node.items():
        submit(ledger, node, receipts)
    ledger.close_epoch()
    income = {}
    for node in nodes:
        history = ledger.get(f"/v1/accounts/{node.public_hex}/history")
        income[node.public_hex] = sum(e["delta"] for e in history if e["kind"] == "spend")
    assert sum(income.values()) == 20  # 40 claimed against a cap of 20
    status = ledger.get(f"/v1/tickets/{tid.hex()}")
    assert status["spent"] == 20 and status["remaining"] == 0
    check = ledger.get("/v1/check")
    assert check["ok"], check["problems"]
    policy.close()


@pytest.mark.parametrize("budget", [0])
def test_zero_budget_never_contacts_the_ledger(budget):
    policy = SpendingPolicy("http://127.0.0.1:9", Identity.generate(), budget=budget)
    assert not policy.offer().paying and policy.last_error == "budget used"
    policy.close()


def test_node_fetches_the_ledger_key_it_trusts(ledger):
    from node.ticket_check import fetch_ledger_key

    assert fetch_ledger_key(ledger.url) == ledger.key
    assert fetch_ledger_key("http://127.0.0.1:9", timeout_s=1) is None


def test_observe_reply_reads_the_receipt_json_a_node_returns(ledger):
    client, node = ledger.rich[3], Identity.generate()
    policy = SpendingPolicy(ledger.url, client, budget=40, ticket_cap=40)
    offer = policy.offer()
    tid = SignedTicket.from_bytes(offer.ticket).id
    policy.observe_reply(offer.ticket, receipt_for(ledger, node, client, tid, price=7).to_json())
    policy.observe_reply(offer.ticket, receipt_for(ledger, node, client, tid, price=2, step=1).to_bytes())
    policy.observe_reply(offer.ticket, None)  # a node without receipts
    policy.observe_reply(offer.ticket, b"")
    policy.observe_reply(offer.ticket, {"receipt": "garbage"})
    policy.observe_reply(offer.ticket, b"garbage")
    assert policy.spent == 9
    policy.close()
