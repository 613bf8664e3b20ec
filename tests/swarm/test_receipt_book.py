"""The client's receipt book: a check held until its receipt is in runs once, chained to the
hop before; a span acks the checks that passed and raises the first that failed."""

from __future__ import annotations

import os

import pytest
import torch

from client.receipt_book import ReceiptBook
from client.remote_calls import CallResult, NodeFailure, SpanSession
from protocol.dht_keys import NodeAnnouncement
from protocol.identity import Identity
from protocol.messages import RequestMeta, ResponseMeta, tensor_to_wire, wire_digest
from protocol.receipts import Kind, Receipt, request_ref_for_step

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


def held(book: ReceiptBook, i: int, step: int, x: torch.Tensor, previous, *, lie: bool = False):
    ann, meta, result = hop(i, step, x, lie=lie)
    return book.check_later(ann, meta, Kind.INFERENCE, step, request_ref_for_step(SESSION, step), result, previous)


def test_a_check_runs_when_asked_and_chains_to_the_hop_before():
    book = ReceiptBook(CLIENT)
    x = torch.randn(1, 1, 8)
    first = held(book, 0, 0, x, None)
    second = held(book, 1, 0, x + 1, first)
    assert not first.done() and not second.done() and book.receipts == []  # nothing checked yet
    first.run()
    second.run()
    a, b = first.result(), second.result()
    assert [r.receipt.node_key for r in book.receipts] == [NODES[0].public_key, NODES[1].public_key]
    assert a.verify_client() and b.verify_client() and a.receipt.output_hash == b.receipt.input_hash
    first.run()  # a check runs once
    assert len(book.receipts) == 2
    third = held(book, 0, 1, x, None)
    fourth = held(book, 1, 1, x + 5, third)  # does not chain: x + 5 is not node 0's output
    third.run()
    fourth.run()
    assert third.result().verify_client()
    with pytest.raises(NodeFailure, match="chain broken"):
        fourth.result()


def test_a_lying_hop_fails_its_check_and_its_span_raises_it_at_settling():
    book = ReceiptBook(CLIENT)
    honest = held(book, 0, 0, torch.randn(1, 1, 8), None)
    liar = held(book, 0, 1, torch.randn(1, 1, 8), None, lie=True)
    owed = held(book, 0, 2, torch.randn(1, 1, 8), None)
    span = SpanSession(conn=None, ann=None, meta=None, batch=1, max_length=8)  # type: ignore[arg-type]
    span.unchecked.extend([honest, liar, owed])
    honest.run()
    span.settle_receipts()  # the honest one is acked; the others have not run yet and stay
    assert span.pending_acks == [[honest.result().id, honest.result().client_signature]]
    assert span.unchecked == [liar, owed]
    liar.run()
    with pytest.raises(NodeFailure, match="output hash"):
        span.settle_receipts()
    assert span.unchecked == [owed] and len(book.receipts) == 1
