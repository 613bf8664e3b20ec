"""The shipper delivers every receipt exactly once through ledger outages and node restarts."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from outbox_fixtures import NODE, StubLedger, make_receipt

from node.receipt_outbox import ReceiptOutbox
from node.receipt_shipper import ReceiptShipper

HERE = Path(__file__).parent


@pytest.fixture
def ledger():
    stub = StubLedger(reject_steps=frozenset({7}))
    yield stub
    stub.close()


def shipper_for(outbox, ledger, **kw) -> ReceiptShipper:
    kw = {"batch_size": 50, "interval_s": 0.05, "backoff_base_s": 0.05, "backoff_cap_s": 0.3, **kw}
    return ReceiptShipper(outbox, ledger.url, NODE, **kw)


def wait_until(cond, timeout=20.0):
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached")
        time.sleep(0.02)


def test_outage_delays_receipts_and_they_ship_exactly_once_after_it(tmp_path, ledger):
    ledger.outage = True
    outbox = ReceiptOutbox(tmp_path / "o.sqlite", synchronous="NORMAL")
    receipts = [make_receipt(i, acked=True) for i in range(300) if i != 7]
    outbox.append_many(receipts)
    with shipper_for(outbox, ledger) as shipper:
        wait_until(lambda: shipper.stats.failures >= 4)  # counted once the 503 came back
        assert ledger.accepted == {} and outbox.counts().unshipped == len(receipts)
        assert ledger.refused >= 4 and "503" in shipper.stats.last_error
        ledger.outage = False
        assert shipper.flush(timeout=20)
    assert set(ledger.accepted) == {s.id for s in receipts}
    assert set(ledger.deliveries.values()) == {1}
    assert outbox.counts().accepted == len(receipts) and outbox.pending(10, include_unacked=True) == []
    outbox.close()


def test_restarting_the_node_mid_way_neither_loses_nor_repeats(tmp_path, ledger):
    path = tmp_path / "o.sqlite"
    receipts = [make_receipt(i, acked=True) for i in range(400) if i != 7]
    outbox = ReceiptOutbox(path)
    outbox.append_many(receipts)
    shipper = shipper_for(outbox, ledger, batch_size=20).start()
    wait_until(lambda: len(ledger.accepted) >= 60)
    shipper.stop()
    outbox.close()
    assert len(ledger.accepted) < len(receipts)  # really stopped mid-way
    with ReceiptOutbox(path) as reopened, shipper_for(reopened, ledger) as again:
        assert again.flush(timeout=20)
    assert set(ledger.accepted) == {s.id for s in receipts}
    assert set(ledger.deliveries.values()) == {1}


def test_shipper_killed_mid_batch_resubmits_and_the_ledger_counts_once(tmp_path, ledger):
    path = tmp_path / "o.sqlite"
    receipts = [make_receipt(i, acked=True) for i in range(600) if i != 7]
    with ReceiptOutbox(path) as outbox:
        outbox.append_many(receipts)
    proc = subprocess.Popen([sys.executable, str(HERE / "shipper_process.py"), str(path), ledger.url, "10"],
                            stdout=subprocess.PIPE, text=True, cwd=HERE)
    try:
        assert proc.stdout.readline().strip() == "started"
        wait_until(lambda: len(ledger.accepted) >= 50)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(timeout=30)
    assert len(ledger.accepted) < len(receipts)
    with ReceiptOutbox(path) as outbox, shipper_for(outbox, ledger) as shipper:
        assert shipper.flush(timeout=30)
        assert outbox.counts().unshipped == 0
    assert set(ledger.accepted) == {s.id for s in receipts}
    assert max(ledger.deliveries.values()) <= 2  # at most the batch in flight at the kill went twice


def test_rejected_receipts_keep_the_reason_and_are_not_retried(tmp_path, ledger):
    with ReceiptOutbox(tmp_path / "o.sqlite", ack_grace_ms=0) as outbox:
        outbox.append_many([make_receipt(i) for i in range(5, 10)])
        with shipper_for(outbox, ledger) as shipper:
            assert shipper.flush(timeout=10)
        bad = outbox.get(make_receipt(7).id)
        assert bad.status == "rejected" and bad.reason == "unknown model manifest"
        assert outbox.counts().rejected == 1 and outbox.counts().accepted == 4
        requests = ledger.requests
        time.sleep(0.2)
        assert ledger.requests == requests


def test_unacked_receipts_ship_on_flush_and_a_late_ack_is_uploaded(tmp_path, ledger):
    with ReceiptOutbox(tmp_path / "o.sqlite", ack_grace_ms=60_000) as outbox:
        signed = make_receipt(1)
        outbox.append(signed)
        shipper = shipper_for(outbox, ledger)
        assert shipper.flush(timeout=10)  # not started: ships from the caller's thread
        assert ledger.accepted[signed.id].client_signature is None
        acked = make_receipt(1, acked=True)
        outbox.attach_client_signature(acked.id, acked.client_signature)
        assert shipper.flush(timeout=10)
        assert ledger.accepted[signed.id].client_signature == acked.client_signature
        shipper.stop()


def test_too_large_batches_are_split(tmp_path):
    stub = StubLedger(max_batch=16)
    try:
        with ReceiptOutbox(tmp_path / "o.sqlite", synchronous="NORMAL") as outbox:
            outbox.append_many([make_receipt(i, acked=True) for i in range(100)])
            with shipper_for(outbox, stub, batch_size=100) as shipper:
                assert shipper.flush(timeout=10)
                assert shipper.batch_size <= 16
        assert len(stub.accepted) == 100
    finally:
        stub.close()
