"""Priority tickets on the wire: a node honours a ticket from a ledger it trusts (the receipt
records the ticket and the price) and serves a forged one free, saying why."""

from __future__ import annotations

import os
import time

import pytest
import torch

from client.spending import SpendingPolicyBase, TicketOffer
from protocol.identity import Identity
from protocol.receipts import Kind
from protocol.tickets import Ticket
from tests.swarm.conftest import InProcessNode

LEDGER = Identity.from_private_bytes(b"\x11" * 32)
FORGER = Identity.from_private_bytes(b"\x22" * 32)


class FixedTicket(SpendingPolicyBase):
    """Attaches one ticket to every request and records what the nodes said."""

    def __init__(self, ticket: bytes):
        self.ticket, self.refused, self.charged = ticket, [], []

    def offer(self) -> TicketOffer:
        return TicketOffer(self.ticket, 2)

    def record_receipt(self, receipt) -> None:
        self.charged.append(receipt.price)

    def on_ticket_refused(self, ticket: bytes, message: str) -> None:
        self.refused.append(message)


def ticket_for(client_key: bytes, ledger: Identity) -> tuple[bytes, bytes]:
    t = Ticket(ticket_id=os.urandom(32), client_key=client_key, node_key=bytes(32), cap=10_000,
               expiry_ms=int(time.time() * 1000) + 600_000, ledger_key=ledger.public_key)
    signed = t.sign(ledger)
    return signed.to_bytes(), t.ticket_id


@pytest.fixture(scope="module")
def ticket_swarm(dht_peer, make_small_model, tmp_path_factory):
    from client import AutoDistributedModelForCausalLM

    keys = tmp_path_factory.mktemp("ticket-keys")
    model = make_small_model("llama", seed=5, layers=2)
    node = InProcessNode([str(model), "--blocks", "0:2", "--initial-peers", *dht_peer, "--key",
                          str(keys / "node.key"), "--trust-ledger-key", LEDGER.public_key.hex()]).wait()
    client = AutoDistributedModelForCausalLM.from_pretrained(str(model), initial_peers=dht_peer,
                                                             key=str(keys / "client.key"))
    yield client
    client.close()
    node.stop()


def test_trusted_ticket_is_charged_and_recorded_in_receipts(ticket_swarm):
    client = ticket_swarm
    ticket, ticket_id = ticket_for(client.swarm.client_key, LEDGER)
    client.swarm.spending = policy = FixedTicket(ticket)
    client.swarm.receipts.receipts.clear()
    with torch.no_grad():
        client(torch.tensor([[3, 4, 5]]))
    client.generate(torch.tensor([[6, 7]]), max_new_tokens=3, min_new_tokens=3, do_sample=False)
    receipts = [r.receipt for r in client.swarm.receipts.receipts]
    assert {r.kind for r in receipts} == {Kind.FORWARD, Kind.INFERENCE}
    assert all(r.ticket_id == ticket_id for r in receipts)
    assert [r.price for r in receipts] == [2 * r.tokens for r in receipts]  # bid 2 per token
    assert policy.charged == [r.price for r in receipts] and not policy.refused


def test_forged_ticket_is_served_free_with_a_reason(ticket_swarm):
    client = ticket_swarm
    forged, _ = ticket_for(client.swarm.client_key, FORGER)
    client.swarm.spending = policy = FixedTicket(forged)
    client.swarm.receipts.receipts.clear()
    with torch.no_grad():
        logits = client(torch.tensor([[3, 4, 5]])).logits
    assert logits.shape[1] == 3
    (receipt,) = [r.receipt for r in client.swarm.receipts.receipts]
    assert receipt.ticket_id == bytes(32) and receipt.price == 0
    assert policy.refused
    client.swarm.spending = None
