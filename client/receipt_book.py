"""The client's side of receipts: verify every one, counter-sign it, keep it.

A receipt is accepted only if the node signed it with the key it announced, it names this
client, this request (model, span, kind, session, step, request reference), commits to
exactly the bytes the client sent and received, and chains with the previous node's
receipt (its output hash is this receipt's input hash). Anything else is a faulty node:
`NodeFailure`, so the caller bans it and re-routes. Accepted receipts are counter-signed
(delivery acknowledged) and kept in `receipts`: the client's evidence of what it got.

`verify` checks at once (forward and backward calls). An inference step's receipt comes
later than its result (protocol/messages.py: `receipt_with_next`), so the session takes a
`ReceiptCheck` with the result (`check_later`) and runs it once the receipt is in, in
step order, on its event-loop thread while the next node computes
(client/inference_session.py).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from functools import partial

from client.remote_calls import CallResult, NodeFailure
from protocol.dht_keys import NodeAnnouncement
from protocol.identity import Identity
from protocol.messages import RequestMeta, wire_digest
from protocol.receipts import Kind, SignedReceipt

logger = logging.getLogger("corolla.client")


@dataclass
class ReceiptBook:
    identity: Identity
    receipts: list[SignedReceipt] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def from_key_file(cls, path: str) -> ReceiptBook:
        return cls(Identity.load_or_create(path))

    @property
    def public_key(self) -> bytes:
        return self.identity.public_key

    def verify(self, ann: NodeAnnouncement, meta: RequestMeta, kind: Kind, step: int, request_ref: bytes,
               result: CallResult, previous: SignedReceipt | None) -> SignedReceipt:
        """Check one receipt against what we asked, sent and received; counter-sign and keep it."""
        problem = None
        try:
            signed = SignedReceipt.from_bytes(result.response.receipt)
        except ValueError as exc:
            raise self._fault(ann, f"missing or malformed receipt ({exc})") from None
        r = signed.receipt
        if not signed.verify_node():
            problem = "bad node signature"
        elif ann.node_key and r.node_key.hex() != ann.node_key:
            problem = "signed with a key other than the one the node announced"
        elif r.client_key != self.public_key:
            problem = "receipt names another client"
        elif (r.model, r.block_start, r.block_end) != (meta.model, meta.start, meta.end):
            problem = "receipt names another model or block span"
        elif r.kind != kind:
            problem = f"receipt kind {r.kind.name} for a {kind.name} request"
        elif r.session_id != meta.session_id or r.step != step:
            problem = "receipt is for another session or step"
        elif r.request_ref != request_ref:
            problem = "receipt does not echo our request reference"
        elif r.input_hash != wire_digest(result.sent):
            problem = "input hash does not match what we sent"
        elif r.output_hash != wire_digest(result.received):
            problem = "output hash does not match what we received"
        elif previous is not None and previous.receipt.output_hash != r.input_hash:
            problem = "chain broken: previous node's output hash != this input hash"
        if problem is not None:
            raise self._fault(ann, problem)
        countersigned = signed.countersign(self.identity)
        with self._lock:
            self.receipts.append(countersigned)
        return countersigned

    def check_later(self, ann: NodeAnnouncement, meta: RequestMeta, kind: Kind, step: int, request_ref: bytes,
                    result: CallResult, previous: ReceiptCheck | None) -> ReceiptCheck:
        """`verify`, to run once `result` has its receipt; chained to `previous`, the check of
        the hop before (run before this one: checks run in the order they were made)."""
        return ReceiptCheck(partial(self.verify, ann, meta, kind, step, request_ref, result), previous)

    @staticmethod
    def _fault(ann: NodeAnnouncement, problem: str) -> NodeFailure:
        logger.warning("node %s returned an invalid receipt: %s; treating it as faulty", ann.peer_id[-8:], problem)
        return NodeFailure(ann.peer_id, f"invalid receipt: {problem}")


@dataclass
class ReceiptCheck:
    """One receipt check, held until its receipt is in: `run()` settles `outcome` with the
    counter-signed receipt or the NodeFailure (an invalid receipt)."""

    verify: Callable[[SignedReceipt | None], SignedReceipt]  # ReceiptBook.verify, but for `previous`
    previous: ReceiptCheck | None
    outcome: Future[SignedReceipt] = field(default_factory=Future)

    def run(self) -> None:
        """Check now, in this thread (once; the previous hop's check has run before, so the
        chain is checked against its receipt unless that one was rejected)."""
        if self.outcome.done():
            return
        previous = None
        if self.previous is not None and self.previous.done() and self.previous.outcome.exception() is None:
            previous = self.previous.outcome.result()
        try:
            self.outcome.set_result(self.verify(previous))
        except BaseException as exc:  # NodeFailure for an invalid receipt, handed to the waiter
            self.outcome.set_exception(exc)

    def done(self) -> bool:
        return self.outcome.done()

    def result(self) -> SignedReceipt:
        """The counter-signed receipt (raises the NodeFailure of an invalid one); after `run()`."""
        return self.outcome.result(timeout=0)
