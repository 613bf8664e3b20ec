"""The client's receipt book: checks held until released run in submission order, chained to
the hop before, and a session waiting for a held check releases it instead of deadlocking."""

from __future__ import annotations

import asyncio
import os
import time

import pytest
import torch

from client.receipt_book import ReceiptBook, request_ref_for_step, wire_digest
from client.remote_calls import CallResult, NodeFailure, SpanSession
from protocol.dht_keys import NodeAnnouncement
from protocol.identity import Identity
from protocol.messages import RequestMeta, ResponseMeta, tensor_to_wire
from protocol.receipts import Kind, Receipt

CLIENT = Identity.from_private_bytes(bytes([7]) * 32)
NODES = [Identity.from_private_bytes(bytes([i + 1]) * 32) for i in range(2)]
SESSION = os.urandom(16)


def hop(i: int, step: int, x: torch.Tensor, *, lie: bool = False) -> tuple[NodeAnnouncement, RequestMeta, CallResult]:
    """Node i's answer to `x` at `step`: its output (x + 1) with a signed receipt."""
    node = NODES[i]
    ann = NodeAnnouncement(peer_id=f"peer{i}" * 8, start=2 * i, end=2 * i + 2, throughput=1.0, forward_tps=1.0,
                           state="online", node_key=node.public_key.hex(), maddrs=[], dtype="float32")
    meta = RequestMeta(model=bytes(32), start=2 * i, end=2 * i + 2, client_key=CLIENT.public_key,
                       request_ref=b"", session_id=SESSION, step=0)
    sent, received = tensor_to_wire(x), tensor_to_wire(x + 1)
    receipt = Receipt(node_key=node.public_key, client_key=CLIENT.public_key, model=bytes(32),
                      block_start=2 * i, block_end=2 * i + 2, kind=Kind.INFERENCE, session_id=SESSION, step=step,
                      batch=1, tokens=1, input_hash=wire_digest(sent),
                      output_hash=wire_digest(tensor_to_wire(x + 2)) if lie else wire_digest(received),
                      blocks_root=bytes(32), request_ref=request_ref_for_step(SESSION, step), timestamp_ms=1)
    response = ResponseMeta(receipt=receipt.sign(node).to_bytes(), compute_ms=1.0)
    return ann, meta, CallResult(x + 1, response, sent, received, 0.0)


def submit(book: ReceiptBook, i: int, step: int, x: torch.Tensor, previous, *, hold: bool, lie: bool = False):
    ann, meta, result = hop(i, step, x, lie=lie)
    return book.submit(ann, meta, Kind.INFERENCE, step, request_ref_for_step(SESSION, step), result, previous,
                       hold=hold)


def test_held_checks_start_at_release_in_order_and_chain_to_the_hop_before():
    book = ReceiptBook(CLIENT)
    x = torch.randn(1, 1, 8)
    first = submit(book, 0, 0, x, None, hold=True)
    second = submit(book, 1, 0, x + 1, first, hold=True)
    time.sleep(0.05)
    assert not first.done() and not second.done() and book.receipts == []
    book.release()
    a, b = first.result(timeout=10), second.result(timeout=10)
    assert [r.receipt.node_key for r in book.receipts] == [NODES[0].public_key, NODES[1].public_key]
    assert a.verify_client() and b.verify_client() and a.receipt.output_hash == b.receipt.input_hash
    # an unheld submit releases what is held before it: checking order stays submission order
    third = submit(book, 0, 1, x, None, hold=True)
    fourth = submit(book, 1, 1, x + 5, third, hold=False)  # does not chain: x + 5 is not node 0's output
    assert third.result(timeout=10).verify_client()
    with pytest.raises(NodeFailure, match="chain broken"):
        fourth.result(timeout=10)


def test_inline_release_checks_in_the_calling_thread_in_submission_order():
    book = ReceiptBook(CLIENT)
    x = torch.randn(1, 1, 8)
    first = submit(book, 0, 0, x, None, hold=True)
    second = submit(book, 1, 0, x + 1, first, hold=True)
    liar = submit(book, 0, 1, x, None, hold=True, lie=True)
    book.release_inline()
    assert first.done() and second.done() and liar.done()  # settled on return, no thread involved
    assert second.result().receipt.input_hash == first.result().receipt.output_hash
    assert isinstance(liar.exception(), NodeFailure)
    assert book._checker._threads == set() and len(book.receipts) == 2


def test_a_lying_hop_fails_its_held_check_and_settling_a_held_check_releases_it():
    book = ReceiptBook(CLIENT)
    pending = submit(book, 0, 0, torch.randn(1, 1, 8), None, hold=True, lie=True)
    span = SpanSession(conn=None, ann=None, meta=None, batch=1, max_length=8)  # type: ignore[arg-type]
    span.unchecked.append(pending)
    with pytest.raises(NodeFailure, match="output hash"):  # would wait forever without the release
        asyncio.run(asyncio.wait_for(span.settle_receipts(book.release_inline), 10))
    assert span.pending_acks == [] and book.receipts == []
