"""Receipt signature checks: the worker pool gives the same answers as in-line checks, under
concurrency and after a worker dies."""

from __future__ import annotations

import json
import threading

from ledger.signature_pool import SignaturePool, _check_chunk
from protocol.identity import Identity
from tests.ledger.harness import LedgerProcess, make_receipt, small_manifest


def _items(n: int, bad_every: int = 7) -> list:
    manifest = small_manifest()
    node, client, other = Identity.generate(), Identity.generate(), Identity.generate()
    items: list = []
    for i in range(n):
        item = make_receipt(node, client, manifest, step=i, ack=i % 3 != 0).to_json()
        if i % bad_every == 1:
            item["node_signature"] = other.sign(b"x").hex()
        elif i % bad_every == 2 and item["client_signature"]:
            item["client_signature"] = other.sign(b"y").hex()
        elif i % bad_every == 3:
            item["receipt"]["tokens"] += 1  # id no longer matches
        items.append(item)
    return items + [{"receipt": "nope"}, 42, None]


def test_pool_answers_like_inline_checks_in_order() -> None:
    items = _items(150)
    pool = SignaturePool(2)
    try:
        assert pool.check(items) == _check_chunk(items)
        assert pool.check(items[:10]) == _check_chunk(items[:10])  # small batch: in-line
    finally:
        pool.close()


def test_pool_serves_concurrent_requests_without_deadlock() -> None:
    items = _items(100)
    expected = _check_chunk(items)
    pool = SignaturePool(2)
    answers: list = []
    lock = threading.Lock()

    def run() -> None:
        for _ in range(4):
            out = pool.check(items)
            with lock:
                answers.append(out)

    try:
        threads = [threading.Thread(target=run) for _ in range(5)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not any(t.is_alive() for t in threads), "a check never returned"
        assert len(answers) == 20 and all(a == expected for a in answers)
    finally:
        pool.close()


def test_pool_replaces_a_dead_worker_and_still_answers() -> None:
    items = _items(80)
    expected = _check_chunk(items)
    pool = SignaturePool(2)
    try:
        assert pool.check(items) == expected
        victim = pool._slots[0].process
        victim.kill()
        victim.join(5)
        assert pool.check(items) == expected  # the dead worker's part is checked in-line
        assert pool._slots[0].process.is_alive()
        assert pool.check(items) == expected
    finally:
        pool.close()


def test_ledger_with_verify_workers_rejects_bad_receipts_one_by_one_and_stores_once(fresh_ledger) -> None:  # type: ignore[no-untyped-def]
    ledger: LedgerProcess = fresh_ledger("sqlite", ["--verify-workers", "2", "--grace-s", "0"])
    manifest = small_manifest()
    c = ledger.client()
    assert c.post("/v1/manifests", manifest.to_json()).status_code == 200
    node, client, other = Identity.generate(), Identity.generate(), Identity.generate()
    good = [make_receipt(node, client, manifest, step=i).to_json() for i in range(120)]
    forged = make_receipt(node, client, manifest).to_json()
    forged["node_signature"] = other.sign(b"x").hex()
    bad_ack = make_receipt(node, client, manifest).to_json()
    bad_ack["client_signature"] = other.sign(b"y").hex()
    batch = good[:60] + [forged] + good[60:] + [bad_ack, good[0]]  # good[0] twice in one batch
    nc = ledger.client(node)
    body = nc.post("/v1/receipts", {"receipts": batch}).json()
    assert sorted(body["accepted"]) == sorted(g["id"] for g in good)
    assert body["duplicates"] == [good[0]["id"]]
    assert sorted(r["reason"] for r in body["rejected"]) == ["bad client counter-signature", "bad node signature"]
    again = nc.post("/v1/receipts", {"receipts": good}).json()
    assert again["accepted"] == [] and sorted(again["duplicates"]) == sorted(g["id"] for g in good)
    ledger.close_epoch()
    assert c.get("/v1/check").json()["ok"]
    per_receipt = manifest.block_flops_per_token * 8 * 2 // 1_000_000
    assert c.get(f"/v1/accounts/{node.public_hex}").json()["earned"] == 120 * per_receipt


def test_pool_checks_an_unpicklable_part_inline_and_keeps_its_workers() -> None:
    items = _items(80)
    deep = json.loads("[" * 900 + "]" * 900)  # about as deep as a JSON body can parse to
    hostile = [*items[:40], {"receipt": deep}, *items[40:70], {"receipt": threading.Lock()}, *items[70:]]
    pool = SignaturePool(2)
    try:
        out = pool.check(hostile)
        assert out[40].problem is not None and out[71].problem is not None
        assert out[:40] + out[41:71] + out[72:] == _check_chunk(items)
        assert pool._idle.qsize() == 2
        assert pool.check(items) == _check_chunk(items)
    finally:
        pool.close()
