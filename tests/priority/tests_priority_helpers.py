"""Receipts as a node writes them, for the ledger-backed priority tests."""

from __future__ import annotations

import os
import time

from protocol.identity import Identity
from protocol.receipts import Kind, Receipt, SignedReceipt


def receipt_for(ledger, node: Identity, client: Identity, ticket_id: bytes, price: int, tokens: int = 1,
                step: int = 0) -> SignedReceipt:
    """A receipt as a node writes it for one paid inference step, counter-signed by the client."""
    r = Receipt(
        node_key=node.public_key, client_key=client.public_key, model=ledger.manifest.manifest_hash(),
        block_start=0, block_end=2, kind=Kind.INFERENCE, session_id=os.urandom(16), step=step, batch=1,
        tokens=tokens, input_hash=os.urandom(32), output_hash=os.urandom(32), blocks_root=os.urandom(32),
        request_ref=os.urandom(32), timestamp_ms=int(time.time() * 1000), ticket_id=ticket_id, price=price,
    )
    return r.sign(node).countersign(client)


def submit(ledger, node: Identity, receipts: list[SignedReceipt]) -> dict:
    resp = ledger.post(node, "/v1/receipts", {"receipts": [r.to_json() for r in receipts]})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert not body["rejected"], body["rejected"]
    return body
