"""Races that must not break the books: concurrent ticket requests, concurrent epoch closes,
and one ticket spent at two nodes."""

from __future__ import annotations

import threading

import pytest

from protocol.identity import Identity
from protocol.tickets import SignedTicket
from tests.ledger.harness import make_receipt

KINDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


@pytest.mark.parametrize("kind", KINDS)
def test_concurrent_tickets_never_overdraw_and_epochs_close_once(fresh_ledger, manifest, kind) -> None:  # type: ignore[no-untyped-def]
    client, node_a, node_b = Identity.generate(), Identity.generate(), Identity.generate()
    ledger = fresh_ledger(kind, ["--grace-s", "0", "--grant", f"{client.public_hex}:1000"])
    codes: list[int] = []
    tickets: list[dict] = []
    lock = threading.Lock()

    def ask() -> None:
        c = ledger.client(client)
        r = c.post("/v1/tickets", {"cap": 300, "ttl_s": 60})
        with lock:
            codes.append(r.status_code)
            if r.status_code == 200:
                tickets.append(r.json())
        c.close()

    threads = [threading.Thread(target=ask) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(codes) == [200] * 3 + [409] * 5
    acct = ledger.client().get(f"/v1/accounts/{client.public_hex}").json()
    assert (acct["balance"], acct["escrow"]) == (100, 900)

    # one any-node ticket spent at two nodes: together never past its cap
    ticket = SignedTicket.from_json(tickets[0])
    ledger.client().post("/v1/manifests", manifest.to_json())
    for node in (node_a, node_b):
        batch = [make_receipt(node, client, manifest, step=i, ticket_id=ticket.id, price=70).to_json()
                 for i in range(3)]
        assert len(ledger.client(node).post("/v1/receipts", {"receipts": batch}).json()["accepted"]) == 3

    results: list[int] = []

    def close() -> None:
        c = ledger.client(ledger.admin)
        r = c.post("/v1/epochs/close", {})
        with lock:
            results.append(r.status_code)
        c.close()

    closers = [threading.Thread(target=close) for _ in range(3)]
    for t in closers:
        t.start()
    for t in closers:
        t.join()
    assert set(results) <= {200, 409} and 200 in results
    epochs = ledger.client().get("/v1/epochs").json()
    assert [e["number"] for e in epochs] == list(range(len(epochs), 0, -1))  # no gap, no duplicate
    assert sum(e["ticket_spent"] for e in epochs) == 300
    spent = ledger.client().get(f"/v1/tickets/{ticket.id.hex()}").json()
    assert (spent["spent"], spent["remaining"]) == (300, 0)
    income = [ledger.client().get(f"/v1/accounts/{n.public_hex}").json()["earned"] for n in (node_a, node_b)]
    work = sum(e["work_minted"] for e in epochs)
    assert sum(income) == work + 300
    assert ledger.client().get("/v1/check").json()["ok"]
