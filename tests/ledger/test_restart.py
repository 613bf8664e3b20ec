"""A ledger killed with SIGKILL in the middle of large batches loses nothing and counts nothing twice."""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from protocol.identity import Identity
from tests.ledger.harness import make_receipt


@pytest.mark.parametrize("kind", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_restart_mid_batch_loses_nothing_and_counts_nothing_twice(fresh_ledger, manifest, kind) -> None:  # type: ignore[no-untyped-def]
    ledger = fresh_ledger(kind, ["--grace-s", "0"])
    node, client = Identity.generate(), Identity.generate()
    ledger.client(node).post("/v1/manifests", manifest.to_json()).raise_for_status()
    receipts = [make_receipt(node, client, manifest, step=i, tokens=6) for i in range(1800)]
    batches = [[r.to_json() for r in receipts[i:i + 300]] for i in range(0, len(receipts), 300)]
    acknowledged: set[str] = set()
    first_done = threading.Event()

    def ship() -> None:
        c = ledger.client(node)
        for batch in batches:
            try:
                body = c.post("/v1/receipts", {"receipts": batch}).json()
            except httpx.HTTPError:
                return  # the ledger died under us, like a real outbox we retry later
            acknowledged.update(body["accepted"])
            first_done.set()

    shipper = threading.Thread(target=ship)
    shipper.start()
    assert first_done.wait(60)
    time.sleep(0.03)  # the next batch is being checked or written now
    ledger.kill()
    shipper.join()
    assert len(acknowledged) < len(receipts), "the kill came too late to interrupt the batches"

    ledger.start()  # same database, same key
    c = ledger.client(node)
    stored_before = {r["id"] for r in _all_receipts(c, node)}
    assert acknowledged <= stored_before, "an acknowledged receipt was lost"
    resubmitted: list[str] = []
    duplicates: list[str] = []
    for batch in batches:
        body = c.post("/v1/receipts", {"receipts": batch}).json()
        assert not body["rejected"]
        resubmitted += body["accepted"]
        duplicates += body["duplicates"]
    assert set(duplicates) == stored_before and not set(resubmitted) & stored_before
    assert len(resubmitted) + len(duplicates) == len(receipts)

    ledger.close_epoch()
    value = manifest.block_flops_per_token * 6 * 2 // 1_000_000
    assert c.get(f"/v1/accounts/{node.public_hex}").json()["balance"] == len(receipts) * value
    assert c.get("/v1/check").json()["ok"]


def _all_receipts(c, node):  # type: ignore[no-untyped-def]
    out, offset = [], 0
    while True:
        page = c.get("/v1/receipts", node=node.public_hex, limit=1000, offset=offset).json()
        out += page
        if len(page) < 1000:
            return out
        offset += 1000
