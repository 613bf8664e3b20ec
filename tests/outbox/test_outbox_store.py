"""The receipt outbox keeps every receipt it acknowledged, through kill -9, exactly once."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from outbox_fixtures import CLIENT, make_receipt

from node.receipt_outbox import OutboxWriter, ReceiptOutbox

HERE = Path(__file__).parent


@pytest.mark.parametrize("synchronous", ["FULL", "NORMAL"])
def test_outbox_survives_kill_9_of_the_writer_between_appends(tmp_path, synchronous):
    path = tmp_path / "outbox.sqlite"
    proc = subprocess.Popen([sys.executable, str(HERE / "outbox_writer.py"), str(path), synchronous],
                            stdout=subprocess.PIPE, text=True, cwd=HERE)
    acknowledged = []
    try:
        for line in proc.stdout:
            acknowledged.append(bytes.fromhex(line.strip()))
            if len(acknowledged) == 200:
                break
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(timeout=30)
    assert len(acknowledged) == 200
    assert sqlite3.connect(path).execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    with ReceiptOutbox(path) as outbox:
        for rid in acknowledged:
            entry = outbox.get(rid)
            assert entry is not None and entry.receipt.verify_node()
            assert (entry.receipt.client_signature is not None) == (entry.receipt.receipt.step % 2 == 0)
        assert outbox.counts().total >= 200  # the killed writer may have committed one more
        assert outbox.append(make_receipt(10_000))  # and the file is still writable


@pytest.mark.parametrize("synchronous", ["FULL", "NORMAL"])
def test_group_commit_writer_survives_kill_9_between_steps(tmp_path, synchronous):
    """What the node's writer said was stored (flush) is there after a kill -9, acks included."""
    path = tmp_path / "outbox.sqlite"
    proc = subprocess.Popen([sys.executable, str(HERE / "outbox_group_writer.py"), str(path), synchronous],
                            stdout=subprocess.PIPE, text=True, cwd=HERE)
    flushed = []
    try:
        for line in proc.stdout:
            receipt_id, acked = line.split()
            flushed.append((bytes.fromhex(receipt_id), None if acked == "-" else bytes.fromhex(acked)))
            if len(flushed) == 200:
                break
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(timeout=30)
    assert len(flushed) == 200
    assert sqlite3.connect(path).execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    with ReceiptOutbox(path) as outbox:
        for rid, acked in flushed:
            entry = outbox.get(rid)
            assert entry is not None and entry.receipt.verify_node()
            if acked is not None:
                assert outbox.get(acked).receipt.verify_client()
        assert outbox.counts().total >= 200


def test_group_commit_writer_checks_acks_and_stores_them_with_or_after_their_receipts(tmp_path):
    with ReceiptOutbox(tmp_path / "o.sqlite", ack_grace_ms=60_000) as outbox:
        writer = OutboxWriter(outbox)
        a, b = make_receipt(1), make_receipt(2)
        ack_a, ack_b = a.countersign(CLIENT).client_signature, b.countersign(CLIENT).client_signature
        writer.append(a)
        writer.attach(a.id, ack_b)  # the client's signature, but of another receipt's ack
        writer.attach(a.id, ack_a)  # good, in the same batch as its receipt
        writer.attach(b"\x09" * 32, ack_a)  # no such receipt
        writer.flush().result(timeout=10)
        assert outbox.get(a.id).receipt.verify_client()
        assert (writer.unknown_acks, writer.bad_acks) == (1, 1)
        writer.append(b)
        writer.flush().result(timeout=10)
        assert outbox.get(b.id).receipt.client_signature is None
        writer.attach(b.id, ack_b)  # its receipt is only in the outbox now
        writer.close()  # stores what is queued
        assert outbox.get(b.id).receipt.verify_client()
        assert outbox.counts().total == 2



def test_a_held_receipt_waits_for_release_and_still_goes_before_its_ack(tmp_path):
    """The node holds a receipt until its reply is written (the writer thread sleeps on); an
    ack, a flush or a close that comes first releases it, so no ack overtakes its receipt."""
    with ReceiptOutbox(tmp_path / "o.sqlite", ack_grace_ms=60_000) as outbox:
        writer = OutboxWriter(outbox, linger_s=0.0)
        a, b, c, d = (make_receipt(i) for i in (1, 2, 3, 4))
        writer.append(a, hold=True)
        writer.flush().result(timeout=10)  # a flush releases what is held before it
        assert outbox.get(a.id) is not None
        writer.append(b, hold=True)
        writer.append(c, hold=True)
        writer.flush().result(timeout=10)
        assert [outbox.get(r.id) is not None for r in (b, c)] == [True, True]
        writer.append(d, hold=True)
        assert outbox.get(d.id) is None  # held: not even queued
        writer.attach(d.id, d.countersign(CLIENT).client_signature)  # the ack releases it first
        writer.flush().result(timeout=10)
        assert outbox.get(d.id).receipt.verify_client() and writer.unknown_acks == 0
        e = make_receipt(5)
        writer.append(e, hold=True)
        writer.release()
        writer.close()
        assert outbox.get(e.id) is not None and outbox.counts().total == 5

def test_held_receipts_and_acks_stored_in_the_calling_thread_are_durable_on_return(tmp_path):
    """store_held (an inference step on the node's event loop): the receipt and the ack that
    rode with the step are checked and stored before it returns, with no writer thread at
    work; a bad ack is dropped. If storing fails, the writer thread takes them and retries."""
    with ReceiptOutbox(tmp_path / "o.sqlite", ack_grace_ms=60_000) as outbox:
        writer = OutboxWriter(outbox, linger_s=0.0)
        a, b = make_receipt(1), make_receipt(2)
        writer.append(a, hold=True)
        writer.store_held()
        assert outbox.get(a.id) is not None and writer._queue.empty()
        writer.attach(a.id, a.countersign(CLIENT).client_signature, hold=True)
        writer.attach(b.id, bytes(64), hold=True)  # acks a receipt stored in the same call, badly
        writer.append(b, hold=True)
        writer.store_held()
        assert outbox.get(a.id).receipt.verify_client() and outbox.get(b.id).receipt.client_signature is None
        assert writer.bad_acks == 1 and writer._queue.empty()

        c = make_receipt(3)
        real_append_many, failures = outbox.append_many, [1]

        def flaky(*args, **kwargs):  # the first try fails (disk full, say), later ones work
            if failures:
                failures.pop()
                raise sqlite3.OperationalError("database or disk is full")
            return real_append_many(*args, **kwargs)

        outbox.append_many = flaky  # type: ignore[method-assign]
        writer.append(c, hold=True)
        writer.store_held()  # fails here, handed to the writer thread
        writer.flush().result(timeout=10)
        assert outbox.get(c.id) is not None
        writer.close()


def test_append_is_idempotent_and_adds_a_late_ack(tmp_path):
    with ReceiptOutbox(tmp_path / "o.sqlite", ack_grace_ms=60_000) as outbox:
        signed = make_receipt(1)
        assert outbox.append(signed) and not outbox.append(signed)
        assert outbox.pending(10) == []  # unacked, inside the grace: the client may still ack
        assert outbox.pending(10, include_unacked=True) == [signed]
        assert outbox.attach_client_signature(signed.id, signed.countersign(CLIENT).client_signature)
        [due] = outbox.pending(10)
        assert due.verify_client() and due.id == signed.id
        assert not outbox.append(make_receipt(1, acked=True))
        assert outbox.counts().total == 1
        assert not outbox.attach_client_signature(b"\x00" * 32, b"\x00" * 64)


def test_unacked_receipts_ship_after_the_grace(tmp_path):
    with ReceiptOutbox(tmp_path / "o.sqlite", ack_grace_ms=1000) as outbox:
        outbox.append(make_receipt(1))
        entry = outbox.get(make_receipt(1).id)
        assert outbox.pending(10, now_ms=entry.created_ms + 999) == []
        assert len(outbox.pending(10, now_ms=entry.created_ms + 1000)) == 1


def test_shipped_receipts_leave_pending_and_an_ack_after_shipping_requeues_once(tmp_path):
    with ReceiptOutbox(tmp_path / "o.sqlite", ack_grace_ms=0) as outbox:
        a, b, c = make_receipt(1), make_receipt(2, acked=True), make_receipt(3)
        outbox.append_many([a, b, c])
        outbox.mark_shipped([a], "accepted")
        outbox.mark_shipped([b.id], "duplicate")
        outbox.mark_rejected({c.id: "unknown model manifest"})
        assert outbox.pending(10) == []
        assert outbox.counts().accepted == 1 and outbox.counts().duplicate == 1 and outbox.counts().rejected == 1
        assert outbox.get(c.id).reason == "unknown model manifest"
        outbox.attach_client_signature(a.id, a.countersign(CLIENT).client_signature)
        assert [s.id for s in outbox.pending(10)] == [a.id]
        outbox.attach_client_signature(a.id, a.countersign(CLIENT).client_signature)  # no second requeue
        assert len(outbox.pending(10)) == 1
        assert outbox.requeue_rejected() == 1 and len(outbox.pending(10)) == 2


def test_acks_stored_in_one_batch_with_new_receipts_follow_the_same_rules(tmp_path):
    """append_many's acks (an inference session's, stored with the next receipts): an ack for
    a receipt the ledger has requeues it once, an unknown id changes nothing, and a receipt
    that has an ack keeps its first one."""
    with ReceiptOutbox(tmp_path / "o.sqlite", ack_grace_ms=60_000) as outbox:
        a, b, c = make_receipt(1), make_receipt(2), make_receipt(3)
        outbox.append_many([a, b])
        outbox.mark_shipped([a], "accepted")
        first = b.countersign(CLIENT).client_signature
        outbox.append_many([], [(b.id, first)])
        new = outbox.append_many([c], [(a.id, a.countersign(CLIENT).client_signature), (b.id, bytes(64)),
                                       (b"\x09" * 32, bytes(64))])
        assert new == 1 and outbox.counts().total == 3
        assert outbox.get(b.id).receipt.client_signature == first
        assert {s.id for s in outbox.pending(10)} == {a.id, b.id}  # a again (now acked), b acked; c waits
        assert outbox.get(a.id).receipt.verify_client()
        assert outbox.attach_client_signature(b"\x09" * 32, bytes(64)) is False
        assert outbox.attach_client_signature(a.id, bytes(64)) is True  # known, already acked: unchanged
        assert outbox.get(a.id).receipt.verify_client()


def test_ack_attached_while_a_batch_is_in_flight_is_not_lost(tmp_path):
    with ReceiptOutbox(tmp_path / "o.sqlite", ack_grace_ms=0) as outbox:
        a = make_receipt(1)
        outbox.append(a)
        [sent] = outbox.pending(10)  # shipper takes the unacked receipt ...
        outbox.attach_client_signature(a.id, a.countersign(CLIENT).client_signature)  # ... ack arrives ...
        outbox.mark_shipped([sent])  # ... ledger answers for the unacked copy
        [again] = outbox.pending(10)
        assert again.verify_client()


def test_outbox_is_safe_under_concurrent_appenders(tmp_path):
    with ReceiptOutbox(tmp_path / "o.sqlite", synchronous="NORMAL", ack_grace_ms=0) as outbox:
        def work(start):
            for i in range(start, start + 100):
                outbox.append(make_receipt(i % 150, acked=i % 3 == 0))
        threads = [threading.Thread(target=work, args=(k * 50,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert outbox.counts().total == 150
        assert len(outbox.pending(1000)) == 150
