"""The client's side of receipts: verify every one, counter-sign it, keep it.

A receipt is accepted only if the node signed it with the key it announced, it names this
client, this request (model, span, kind, session, step, request reference), commits to
exactly the bytes the client sent and received, and chains with the previous node's
receipt (its output hash is this receipt's input hash). Anything else is a faulty node:
`NodeFailure`, so the caller bans it and re-routes. Accepted receipts are counter-signed
(delivery acknowledged) and kept in `receipts`: the client's evidence of what it got.

`verify` checks at once; `submit` checks on the book's one checker thread, in submission
order, so an inference step hands its output on while the receipt is checked (the
session waits for the verdict before the node's next step: see client/inference_session.py).
`submit(..., hold=True)` only records the check; `release()` starts the held checks on the
checker thread, `release(inline=True)` runs them at once in the caller's thread. An
inference session releases them inline on its event-loop thread right after it has sent
the next request: the loop has nothing else to do while that node computes, and the check
then costs no thread hand-off and no contention for the GIL on the critical path.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from client.remote_calls import CallResult, NodeFailure
from protocol.dht_keys import NodeAnnouncement
from protocol.hashing import digest, tensor_digest_raw
from protocol.identity import Identity
from protocol.messages import RequestMeta, WireTensor
from protocol.receipts import Kind, SignedReceipt

logger = logging.getLogger("corolla.client")


def request_ref_for_step(session_id: bytes, step: int) -> bytes:
    """Same derivation as the node's (node/receipt_signing.py) for inference steps."""
    return digest(b"COROLLA/request-ref/v1" + session_id + step.to_bytes(4, "big"))


def wire_digest(wire: WireTensor) -> bytes:
    return tensor_digest_raw(wire.dtype, tuple(wire.shape), wire.data)


@dataclass
class ReceiptBook:
    identity: Identity
    receipts: list[SignedReceipt] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _checker: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(1, thread_name_prefix="corolla-receipts"))
    _held: list[tuple[Future[SignedReceipt], tuple[Any, ...]]] = field(default_factory=list)

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

    def submit(self, ann: NodeAnnouncement, meta: RequestMeta, kind: Kind, step: int, request_ref: bytes,
               result: CallResult, previous: Future[SignedReceipt] | SignedReceipt | None, *,
               hold: bool = False) -> Future[SignedReceipt]:
        """`verify` in the background: a future of the counter-signed receipt, or of NodeFailure.

        `previous` may itself be a submitted receipt: it was submitted earlier, so the checker
        thread has settled it by then (the chain is not checked against a rejected receipt).
        With `hold`, the check starts at the next `release()` (or unheld `submit`); whoever
        waits for the future must make sure that comes.
        """
        args = (ann, meta, kind, step, request_ref, result, previous)
        future: Future[SignedReceipt] = Future()
        with self._lock:
            self._held.append((future, args))
        if not hold:
            self.release()
        return future

    def release(self, inline: bool = False) -> None:
        """Start the held checks on the checker thread, in the order they were submitted; with
        `inline`, run them now in this thread (their futures are settled on return).

        Inline checks must not overlap the checker thread's (chaining reads the previous
        check's result): a book is used either with inline releases only (an inference
        session) or without them."""
        with self._lock:
            held, self._held = self._held, []
            if not inline:
                for future, args in held:  # under the lock: submission order is checking order
                    self._checker.submit(self._run, future, args)
                return
        for future, args in held:
            self._run(future, args)

    def release_inline(self) -> None:
        """`release(inline=True)`."""
        self.release(inline=True)

    def _run(self, future: Future[SignedReceipt], args: tuple[Any, ...]) -> None:
        if not future.set_running_or_notify_cancel():
            return
        try:
            future.set_result(self._verify_chained(*args))
        except BaseException as exc:  # NodeFailure for an invalid receipt, handed to the waiter
            future.set_exception(exc)

    def _verify_chained(self, ann: NodeAnnouncement, meta: RequestMeta, kind: Kind, step: int, request_ref: bytes,
                        result: CallResult, previous: Future[SignedReceipt] | SignedReceipt | None) -> SignedReceipt:
        if isinstance(previous, Future):
            previous = previous.result() if previous.done() and previous.exception() is None else None
        return self.verify(ann, meta, kind, step, request_ref, result, previous)

    @staticmethod
    def _fault(ann: NodeAnnouncement, problem: str) -> NodeFailure:
        logger.warning("node %s returned an invalid receipt: %s; treating it as faulty", ann.peer_id[-8:], problem)
        return NodeFailure(ann.peer_id, f"invalid receipt: {problem}")
