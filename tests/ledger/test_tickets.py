"""Priority tickets: escrow, cap, expiry, refunds — settled from receipts at epoch close."""

from __future__ import annotations

import time

from protocol.identity import Identity
from protocol.tickets import SignedTicket
from tests.ledger.harness import make_receipt


def test_ticket_is_never_spent_past_cap_or_after_expiry(fresh_ledger, manifest) -> None:  # type: ignore[no-untyped-def]
    client, node, stranger = Identity.generate(), Identity.generate(), Identity.generate()
    ledger = fresh_ledger("sqlite", ["--grace-s", "0", "--grant", f"{client.public_hex}:1000"])
    c, n = ledger.client(client), ledger.client(node)
    assert n.post("/v1/manifests", manifest.to_json()).status_code == 200

    r = c.post("/v1/tickets", {"cap": 300, "ttl_s": 60})
    assert r.status_code == 200, r.text
    ticket = SignedTicket.from_json(r.json())
    assert ticket.verify(bytes.fromhex(ledger.ledger_key))
    assert ticket.check_for(client.public_key, node.public_key, int(time.time() * 1000)) is None
    acct = c.get(f"/v1/accounts/{client.public_hex}").json()
    assert (acct["balance"], acct["escrow"]) == (700, 300)
    assert c.post("/v1/tickets", {"cap": 800, "ttl_s": 60}).status_code == 409  # more than the balance

    paid = [make_receipt(node, client, manifest, step=i, ticket_id=ticket.id, price=100) for i in range(5)]
    foreign = make_receipt(node, stranger, manifest, ticket_id=ticket.id, price=100)
    body = n.post("/v1/receipts", {"receipts": [r.to_json() for r in paid] + [foreign.to_json()]}).json()
    assert len(body["accepted"]) == 5
    assert body["rejected"][0]["reason"] == "ticket belongs to another client"

    short = SignedTicket.from_json(c.post("/v1/tickets", {"cap": 200, "ttl_s": 1}).json())
    before = make_receipt(node, client, manifest, ticket_id=short.id, price=50)
    time.sleep(max(0.0, short.ticket.expiry_ms / 1000 - time.time()) + 0.05)
    after = make_receipt(node, client, manifest, ticket_id=short.id, price=50)
    assert len(n.post("/v1/receipts", {"receipts": [before.to_json(), after.to_json()]}).json()["accepted"]) == 2

    epoch = ledger.close_epoch()
    assert epoch["ticket_spent"] == 300 + 50 and epoch["refunded"] == 150
    t1 = c.get(f"/v1/tickets/{ticket.id.hex()}").json()
    assert (t1["spent"], t1["remaining"], t1["status"]) == (300, 0, "open")
    t2 = c.get(f"/v1/tickets/{short.id.hex()}").json()
    assert (t2["spent"], t2["refunded"], t2["status"]) == (50, 150, "closed")
    acct = c.get(f"/v1/accounts/{client.public_hex}").json()
    assert acct["balance"] == 1000 - 300 - 200 + 150 and acct["escrow"] == 0
    node_acct = n.get(f"/v1/accounts/{node.public_hex}").json()
    work = epoch["work_minted"]
    assert node_acct["balance"] == work + 350 and node_acct["earned"] == work + 350
    assert ledger.close_epoch()["ticket_spent"] == 0  # nothing is spent twice
    assert c.get("/v1/check").json()["ok"]


def test_ticket_for_one_node_cannot_be_spent_at_another(fresh_ledger, manifest) -> None:  # type: ignore[no-untyped-def]
    client, node, other = Identity.generate(), Identity.generate(), Identity.generate()
    ledger = fresh_ledger("sqlite", ["--grant", f"{client.public_hex}:100"])
    c = ledger.client(client)
    c.post("/v1/manifests", manifest.to_json())
    ticket = SignedTicket.from_json(c.post("/v1/tickets", {"cap": 50, "ttl_s": 60,
                                                           "node_key": node.public_hex}).json())
    assert ticket.check_for(client.public_key, other.public_key, int(time.time() * 1000)) == "wrong node"
    r = make_receipt(other, client, manifest, ticket_id=ticket.id, price=10)
    body = ledger.client(other).post("/v1/receipts", {"receipts": [r.to_json()]}).json()
    assert body["rejected"] == [{"id": r.id.hex(), "reason": "ticket is for another node"}]
