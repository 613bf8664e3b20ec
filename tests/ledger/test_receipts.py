"""Receipt ingestion on a real ledger process: checks, idempotency, concurrency, payment."""

from __future__ import annotations

import random
import threading

from protocol.identity import Identity
from tests.ledger.harness import LedgerProcess, make_receipt, small_manifest


def _register(ledger: LedgerProcess, manifest) -> None:  # type: ignore[no-untyped-def]
    c = ledger.client()
    r = c.post("/v1/manifests", manifest.to_json())
    assert r.status_code == 200, r.text
    assert r.json()["manifest_hash"] == manifest.manifest_hash().hex()


def test_ledger_ignores_duplicate_receipt_and_pays_it_once(ledger: LedgerProcess, manifest) -> None:  # type: ignore[no-untyped-def]
    _register(ledger, manifest)
    node, client = Identity.generate(), Identity.generate()
    receipts = [make_receipt(node, client, manifest, step=i, tokens=10) for i in range(5)]
    c = ledger.client(node)
    first = c.post("/v1/receipts", {"receipts": [r.to_json() for r in receipts]}).json()
    assert sorted(first["accepted"]) == sorted(r.id.hex() for r in receipts)
    again = c.post("/v1/receipts", {"receipts": [r.to_json() for r in receipts[:3]]}).json()
    assert again["accepted"] == [] and sorted(again["duplicates"]) == sorted(r.id.hex() for r in receipts[:3])

    ledger.close_epoch()
    account = c.get(f"/v1/accounts/{node.public_hex}").json()
    per_receipt = manifest.block_flops_per_token * 10 * 2 // 1_000_000
    assert account["balance"] == account["earned"] == 5 * per_receipt
    assert c.get(f"/v1/receipts/{receipts[0].id.hex()}").json()["status"] == "paid"
    assert c.get("/v1/receipts/due", node=node.public_hex).json() == []  # paid: no longer queued...
    late = c.get("/v1/receipts/due", node=node.public_hex, include_paid="true").json()
    assert len(late) == 5  # ...unless the verifier asks for paid, never-checked ones too
    ledger.close_epoch()  # a second epoch pays nothing more
    assert c.get(f"/v1/accounts/{node.public_hex}").json()["balance"] == 5 * per_receipt
    assert c.get("/v1/check").json()["ok"]


def test_bad_receipts_are_rejected_one_by_one(ledger: LedgerProcess, manifest) -> None:  # type: ignore[no-untyped-def]
    _register(ledger, manifest)
    node, client, other = Identity.generate(), Identity.generate(), Identity.generate()
    good = make_receipt(node, client, manifest)
    forged = make_receipt(node, client, manifest).to_json()
    forged["node_signature"] = other.sign(b"x").hex()
    bad_ack = make_receipt(node, client, manifest).to_json()
    bad_ack["client_signature"] = other.sign(b"y").hex()
    unknown_model = make_receipt(node, client, small_manifest("other"))
    out_of_span = make_receipt(node, client, manifest, blocks=(2, 9))
    future = make_receipt(node, client, manifest, timestamp_ms=2**50)
    tampered = make_receipt(node, client, manifest).to_json()
    tampered["receipt"]["tokens"] = 999
    batch = [good.to_json(), forged, bad_ack, unknown_model.to_json(), out_of_span.to_json(), future.to_json(),
             tampered, {"receipt": "nope"}, 42]
    body = ledger.client(node).post("/v1/receipts", {"receipts": batch}).json()
    assert body["accepted"] == [good.id.hex()]
    reasons = [r["reason"] for r in body["rejected"]]
    assert len(reasons) == 8
    assert "bad node signature" in reasons and "bad client counter-signature" in reasons
    assert any("unknown model manifest" in r for r in reasons)
    assert any("outside the model" in r for r in reasons)
    assert "timestamp is in the future" in reasons
    assert any("id does not match" in r for r in reasons)


def test_unacked_receipt_is_upgraded_by_a_countersigned_resubmission(ledger: LedgerProcess, manifest) -> None:  # type: ignore[no-untyped-def]
    _register(ledger, manifest)
    node, client = Identity.generate(), Identity.generate()
    bare = make_receipt(node, client, manifest, ack=False)
    c = ledger.client(node)
    assert c.post("/v1/receipts", {"receipts": [bare.to_json()]}).json()["accepted"] == [bare.id.hex()]
    ledger.close_epoch()
    assert c.get(f"/v1/receipts/{bare.id.hex()}").json()["status"] == "pending"  # not paid without the ack
    acked = bare.countersign(client)
    assert c.post("/v1/receipts", {"receipts": [acked.to_json()]}).json()["duplicates"] == [bare.id.hex()]
    ledger.close_epoch()
    detail = c.get(f"/v1/receipts/{bare.id.hex()}").json()
    assert detail["status"] == "paid" and detail["acked"]


def test_concurrent_overlapping_batches_store_each_receipt_once(ledger: LedgerProcess, manifest) -> None:  # type: ignore[no-untyped-def]
    _register(ledger, manifest)
    node, client = Identity.generate(), Identity.generate()
    pool = [make_receipt(node, client, manifest, step=i, tokens=4) for i in range(300)]
    outcomes: list[dict] = []
    lock = threading.Lock()

    def submit(seed: int) -> None:
        rng = random.Random(seed)
        c = ledger.client(node)
        for _ in range(5):
            batch = rng.sample(pool, 80)
            body = c.post("/v1/receipts", {"receipts": [r.to_json() for r in batch]}).json()
            with lock:
                outcomes.append(body)
        c.close()

    threads = [threading.Thread(target=submit, args=(s,)) for s in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    accepted = [rid for body in outcomes for rid in body["accepted"]]
    assert len(accepted) == len(set(accepted)), "a receipt was accepted twice"
    assert all(not body["rejected"] for body in outcomes)
    stored = ledger.client().get("/v1/receipts", node=node.public_hex, limit=1000).json()
    assert {r["id"] for r in stored} == set(accepted)
    assert ledger.client().get("/v1/check").json()["ok"]
