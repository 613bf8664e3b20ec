"""An inference session through a chain of nodes, with recovery that replays history.

Each node keeps its own attention cache; the client keeps, per node, the hidden states
it sent (`SpanSession.history`). When a node fails, it is banned, a new chain covering
the same blocks is opened and the stored inputs are replayed through it before the
current step continues, so the replacement's cache is exactly what the failed node's was
(correct by construction: nothing is recomputed from outputs we did not keep).

With an identity, the client opens each span with `receipt_with_next` and
`receipt_batch` (SwarmContext.receipt_batch, default 4): a node sends a step's output at
once and signs its receipt after, and the receipts come in front of a later answer of the
node, in the same write, up to `receipt_batch` at a time (protocol/messages.py). So the
output goes on to the next hop before any hashing or signing, a receipt costs no frame of
its own, and the node signs and stores several in one go. A node that holds back more is
treated as failed. Each receipt is verified and counter-signed as soon as it is in, in
step order, on the event-loop thread right after the next request is written, while that
node computes (`_release`): it never competes with the client forwarding an output. A
node's counter-signatures travel in the same write as its next step; a node whose receipt
failed is treated as failed at its next step, like any other failure (so at most
`receipt_batch` + 1 steps after the result the receipt was for). `close()` (the end of
`generate`) collects the receipts still owed (`SpanSession.finish`), checks them, sends
the last counter-signatures with `close` and bans a node whose last receipts failed.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Any

import torch

from client.receipt_book import ReceiptCheck
from client.remote_calls import CallResult, NodeFailure, SpanSession, new_session_id
from client.swarm_context import SwarmContext
from protocol.receipts import Kind, request_ref_for_step

logger = logging.getLogger("corolla.client")

OPEN_TIMEOUT_S = 10.0
PREFILL_TIMEOUT_S = 60.0
MIN_STEP_TIMEOUT_S = 3.0
FINISH_TIMEOUT_S = 3.0  # collecting a node's last receipts at close


class SessionLengthError(ValueError):
    """More positions than the session's max_length."""


class InferenceSession:
    """Use as a context manager; `step(hidden)` sends new positions and returns block outputs."""

    def __init__(self, swarm: SwarmContext, max_length: int):
        self.swarm = swarm
        self.max_length = max_length
        self.session_id = new_session_id()
        self.spans: list[SpanSession] = []
        self.position = 0
        self.steps = 0
        self.batch: int | None = None
        self.closed = False
        # receipt checks in the order of their results, each with its span and result
        self._checks: deque[tuple[SpanSession, CallResult, ReceiptCheck]] = deque()
        self.last_compute_ms: list[float] = []  # per hop, as reported by the nodes for the last step
        self.last_rtt_ms: list[float] = []  # per hop, stream round trip of the last step

    # ----- sync API (any thread but the loop's) --------------------------------------

    def step(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.closed:
            raise RuntimeError("inference session is closed")
        if hidden.ndim != 3:
            raise ValueError(f"hidden states must be [batch, seq, hidden], got {list(hidden.shape)}")
        if self.batch is not None and hidden.shape[0] != self.batch:
            raise ValueError(f"this session has batch {self.batch}, got {hidden.shape[0]}")
        if self.position + hidden.shape[1] > self.max_length:
            raise SessionLengthError(
                f"inference session max_length is {self.max_length}: {self.position} positions used, "
                f"{hidden.shape[1]} more requested; open a session with a larger max_length")
        out = self.swarm.conn.run(self._step(hidden.detach()))
        self.position += hidden.shape[1]
        self.steps += 1
        return out.to(hidden.dtype)

    def collect_receipts(self) -> None:
        """Collect and check the receipts the nodes still owe (generate() calls this when it
        returns inside a longer session): nothing is owed while the user pauses, so a node
        that closes the session on idle takes no receipt with it. A node whose receipt failed
        is re-routed at the next step (or banned at close)."""
        if not self.closed and self.spans and self.swarm.receipts is not None:
            self.swarm.conn.run(self._collect(self.spans))

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.swarm.conn.run(self._close_all(self.spans))
            self.spans = []

    def __enter__(self) -> InferenceSession:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ----- on the loop thread ----------------------------------------------------------

    async def _step(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.batch is None:
            self.batch = hidden.shape[0]
        if not self.spans:
            self.spans = await self._open_chain(0, self.swarm.num_blocks, None)
        x, i, failures, previous = hidden, 0, 0, None
        self.last_compute_ms, self.last_rtt_ms = [], []
        while i < len(self.spans):
            span = self.spans[i]
            try:
                result, previous = await self._run_span(span, x, self._timeout(span, x.shape[1]), previous)
                x = result.output
                self.last_compute_ms.append(result.response.compute_ms)
                self.last_rtt_ms.append(result.rtt_s * 1e3)
                i += 1
            except NodeFailure as failure:
                failures += 1
                if failure.ban:
                    self.swarm.fail(failure)
                if failures >= self.swarm.max_attempts:
                    raise
                logger.info("%s blocks %d:%d after %s of %s",
                            "re-routing" if failure.ban else "re-opening", span.ann.start, span.ann.end,
                            "failure" if failure.ban else "the session expired on idle", failure.peer_id[-8:])
                if not failure.ban:
                    span.forgive_owed()
                await self._close_all([span])
                self.spans[i : i + 1] = await self._open_chain(span.ann.start, span.ann.end, span.prefix(self.position))
                previous = None  # the replacement chain's receipts restart the chain at this hop
        return x

    async def _run_span(self, span: SpanSession, x: torch.Tensor, timeout: float,
                        previous: ReceiptCheck | None) -> tuple[CallResult, ReceiptCheck | None]:
        """One step on one node, once its receipts checked so far passed; with an identity, its
        receipt is checked (chained to `previous`, the hop before in this step) once it is in."""
        book = self.swarm.receipts
        span.settle_receipts()
        result = await span.step(x, self.steps, timeout, after_send=None if book is None else self._release)
        if book is None:
            self.swarm.observe(span.meta, result.response)
            return result, None
        check = book.check_later(span.ann, span.meta, Kind.INFERENCE, self.steps,
                                 request_ref_for_step(self.session_id, self.steps), result, previous)
        span.unchecked.append(check)
        self._checks.append((span, result, check))
        return result, check

    def _release(self) -> None:
        """Run the receipt checks whose receipts are in, in the order of their results (a
        check chains to the one before it); stop at the first receipt still owed."""
        while self._checks and not self._checks[0][1].receipt_owed:
            span, result, check = self._checks.popleft()
            if result.receipt_forgiven:
                span.unchecked.remove(check)
                continue
            self.swarm.observe(span.meta, result.response)  # what the receipt charged
            check.run()

    def _timeout(self, span: SpanSession, new_positions: int) -> float:
        if span.step_time_s == 0.0 or new_positions > 1:
            return PREFILL_TIMEOUT_S
        return max(MIN_STEP_TIMEOUT_S, 50 * span.step_time_s)

    async def _open_chain(self, start: int, end: int, prefix: torch.Tensor | None) -> list[SpanSession]:
        """Open sessions on a chain covering [start, end) and replay `prefix` through it."""
        assert self.batch is not None
        for _attempt in range(self.swarm.max_attempts):
            chain = await self.swarm.router.route(start, end)
            spans = [SpanSession(self.swarm.conn, ann, self.swarm.meta(ann, self.session_id, 0), self.batch,
                                 self.max_length, receipt_with_next=self.swarm.receipts is not None,
                                 receipt_batch=self.swarm.receipt_batch)
                     for ann in chain]
            try:
                x, previous = prefix, None
                for span in spans:
                    await span.open(OPEN_TIMEOUT_S)
                    if x is not None:
                        result, previous = await self._run_span(span, x, PREFILL_TIMEOUT_S, previous)
                        x = result.output
                return spans
            except NodeFailure as failure:
                self.swarm.fail(failure)
                await self._close_all(spans)
        raise NodeFailure("?", f"could not open a chain for blocks {start}:{end} in {self.swarm.max_attempts} tries")

    async def _collect(self, spans: list[SpanSession]) -> None:
        if self.swarm.receipts is not None:
            await asyncio.gather(*(span.finish(FINISH_TIMEOUT_S) for span in spans))
            self._release()

    async def _close_all(self, spans: list[SpanSession]) -> None:
        """Close once the spans' receipts are in and checked: their acks go with `close`; a node
        whose receipt failed is banned (its outputs were delivered already, nothing to redo)."""
        await self._collect(spans)
        for span in spans:
            try:
                span.settle_receipts()
            except NodeFailure as failure:
                self.swarm.fail(failure)
            await span.close()
