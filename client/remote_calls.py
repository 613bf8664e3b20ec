"""Calls to one node: forward, backward, and one inference session's stream.

Failures that another node could fix (a vanished peer, a timeout, an internal error, a
busy node) become `NodeFailure`, which callers answer by banning the peer and
re-routing. Mistakes in the request itself (bad shapes, too long) stay `RemoteError` and
reach the user: another node would refuse them too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from client.swarm_connection import SwarmConnection
from protocol.dht_keys import NodeAnnouncement
from protocol.messages import (
    ErrorCode,
    Frame,
    RemoteError,
    RequestMeta,
    ResponseMeta,
    WireError,
    raise_if_error,
    read_frame,
    tensor_from_wire,
    tensor_to_wire,
    write_frame,
    write_frames,
)

logger = logging.getLogger("corolla.client")

USER_ERRORS = {ErrorCode.BAD_REQUEST, ErrorCode.TOO_LONG, ErrorCode.TOO_LARGE}


class NodeFailure(Exception):
    """A node failed in a way another node may not: ban it and re-route. With `ban` False the
    node did nothing wrong (it closed a session we left idle past its timeout): re-open, no ban."""

    def __init__(self, peer_id: str, reason: str, *, ban: bool = True):
        super().__init__(f"node {peer_id[-8:]}: {reason}")
        self.peer_id = peer_id
        self.reason = reason
        self.ban = ban


# A session idle this long may have been closed by its node (`corolla node --session-idle-timeout`):
# a broken stream after such a pause is an expired session, not a faulty node.
IDLE_EXPIRY_S = 1.0


@dataclass
class CallResult:
    output: torch.Tensor
    response: ResponseMeta
    sent: Any  # the WireTensor that was sent (its digest is the receipt's input hash)
    received: Any  # the WireTensor received
    rtt_s: float
    receipt_owed: bool = False  # the node sends this result's receipt later on its stream
    receipt_forgiven: bool = False  # lost with a session the node closed on idle: not checked


def _check_reply(ann: NodeAnnouncement, frame: Frame) -> Frame:
    try:
        raise_if_error(frame)
    except RemoteError as exc:
        if exc.code in USER_ERRORS:
            raise
        raise NodeFailure(ann.peer_id, str(exc)) from exc
    if frame.kind != "result" or len(frame.tensors) != 1:
        raise NodeFailure(ann.peer_id, f"malformed reply {frame.kind!r} with {len(frame.tensors)} tensors")
    return frame


def _expired(failure: NodeFailure, idle_s: float) -> bool:
    """Did the node close this session for idling (its own words, or a dropped stream after a pause)?"""
    if "idle too long" in failure.reason:
        return True
    return idle_s >= IDLE_EXPIRY_S and failure.reason.startswith(("connection failed", "stream closed"))


async def _guarded(ann: NodeAnnouncement, coro: Any, timeout: float) -> Any:
    """Await `coro` within `timeout` (in this task: no task per step, as wait_for would
    make on Python 3.11); network and protocol errors become NodeFailure for this node."""
    try:
        async with asyncio.timeout(timeout):
            return await coro
    except TimeoutError:
        raise NodeFailure(ann.peer_id, f"no answer within {timeout:.1f} s") from None
    except asyncio.IncompleteReadError:
        raise NodeFailure(ann.peer_id, "stream closed before the reply (node gone?)") from None
    except WireError as exc:
        raise NodeFailure(ann.peer_id, f"unreadable reply: {exc}") from None
    except (ConnectionError, OSError) as exc:
        raise NodeFailure(ann.peer_id, f"connection failed: {exc}") from None
    except Exception as exc:  # p2pd errors (dial failures) come as assorted types
        if isinstance(exc, (RemoteError, NodeFailure)):
            raise
        raise NodeFailure(ann.peer_id, f"{type(exc).__name__}: {exc}") from None


async def call_span(conn: SwarmConnection, ann: NodeAnnouncement, kind: str, meta: RequestMeta,
                    tensors: list[torch.Tensor], timeout: float) -> CallResult:
    """Unary forward or backward on one node."""
    wires = [tensor_to_wire(t) for t in tensors]
    started = time.perf_counter()
    reply = await _guarded(ann, conn.call(ann, kind, Frame(kind, meta.to_meta(), wires)), timeout)
    reply = _check_reply(ann, reply)
    # the receipt's input hash covers the last tensor (forward: hidden; backward: output gradient)
    return CallResult(tensor_from_wire(reply.tensors[0]), ResponseMeta.from_meta(reply.meta), wires[-1],
                      reply.tensors[0], time.perf_counter() - started)


@dataclass
class SpanSession:
    """One node's part of an inference session: a stream kept open across steps.

    With `receipt_with_next`, a step's result comes without its receipt: the node sends the
    receipt in front of a later answer, at most `receipt_batch` results later
    (protocol/messages.py), so `owed` lists the results still waiting for theirs, and
    `finish()` collects the last ones before `close()`."""

    conn: SwarmConnection
    ann: NodeAnnouncement
    meta: RequestMeta
    batch: int
    max_length: int
    history: list[torch.Tensor] = field(default_factory=list)  # inputs sent, for replay elsewhere
    position: int = 0
    step_time_s: float = 0.0
    unchecked: list[Any] = field(default_factory=list)  # ReceiptChecks of our results, oldest first
    pending_acks: list[list[bytes]] = field(default_factory=list)  # counter-signatures for the next frame
    receipt_with_next: bool = False
    receipt_batch: int = 1  # with receipt_with_next: how many receipts the node may hold back
    owed: deque[CallResult] = field(default_factory=deque)  # results whose receipt is still to come
    _reader: asyncio.StreamReader | None = None
    _writer: asyncio.StreamWriter | None = None
    _last_used: float = field(default_factory=time.monotonic)

    async def open(self, timeout: float) -> None:
        async def _open() -> None:
            self._reader, self._writer = await self.conn.open_stream(self.ann, "inference")
            meta = {**self.meta.to_meta(), "batch": self.batch, "max_length": self.max_length}
            if self.receipt_with_next:
                meta["receipt_with_next"], meta["receipt_batch"] = True, self.receipt_batch
            frame = Frame("open_session", meta)
            await write_frame(self._writer, frame)

        await _guarded(self.ann, _open(), timeout)

    async def step(self, hidden: torch.Tensor, step: int, timeout: float, extra: dict[str, Any] | None = None,
                   after_send: Callable[[], Any] | None = None) -> CallResult:
        """One step; `after_send()` runs once the request is written, while the node computes."""
        assert self._reader is not None and self._writer is not None, "session not opened"
        wire = tensor_to_wire(hidden)
        started = time.perf_counter()

        async def _roundtrip() -> Frame:
            assert self._writer is not None
            step_frame = Frame("step", {"step": step, **(extra or {})}, [wire])
            await write_frames(self._writer, [*self._ack_frames(), step_frame])  # acks ride along
            if after_send is not None:
                after_send()
            return await self._read_answer()

        idle_s, self._last_used = time.monotonic() - self._last_used, time.monotonic()
        try:
            reply = _check_reply(self.ann, await _guarded(self.ann, _roundtrip(), timeout))
        except NodeFailure as failure:
            failure.ban = not _expired(failure, idle_s)
            raise
        elapsed = time.perf_counter() - started
        self.step_time_s = elapsed if self.step_time_s == 0 else 0.8 * self.step_time_s + 0.2 * elapsed
        self.history.append(hidden)
        self.position += hidden.shape[1]
        response = ResponseMeta.from_meta(reply.meta)
        result = CallResult(tensor_from_wire(reply.tensors[0]), response, wire, reply.tensors[0], elapsed,
                            receipt_owed=response.receipt_follows)
        if result.receipt_owed:
            self.owed.append(result)
            if len(self.owed) > self.receipt_batch:
                logger.warning("node %s holds back %d receipts (at most %d allowed); treating it as faulty",
                               self.ann.peer_id[-8:], len(self.owed), self.receipt_batch)
                raise NodeFailure(self.ann.peer_id, f"withholds receipts: {len(self.owed)} results without one")
        return result

    async def _read_answer(self) -> Frame:
        """The node's next answer; the receipts it owes come in front of it."""
        assert self._reader is not None
        while True:
            frame = await read_frame(self._reader)
            if frame.kind != "receipt":
                return frame
            if not self.owed:
                logger.info("node %s sent a receipt for no result of ours; ignored", self.ann.peer_id[-8:])
                continue
            result = self.owed.popleft()
            receipt = frame.meta.get("receipt")
            if isinstance(receipt, (bytes, bytearray)):  # else it stays empty: the receipt book rejects it
                result.response = replace(result.response, receipt=bytes(receipt))
            result.receipt_owed = False

    async def finish(self, timeout: float) -> None:
        """Collect the receipts the node still owes (it sends them with `finished`, or before
        the error it closed the session with, e.g. on idle). One it cannot deliver stays
        empty, which the receipt book rejects as this node's fault."""
        if self.owed and self._reader is not None and self._writer is not None:
            async def _finish() -> None:
                assert self._writer is not None
                with contextlib.suppress(ConnectionError, OSError):  # what it sent may still be buffered
                    await write_frames(self._writer, [Frame("finish")])
                answer = raise_if_error(await self._read_answer())
                if answer.kind != "finished":
                    raise NodeFailure(self.ann.peer_id, f"answered finish with a {answer.kind!r} frame")

            try:
                await _guarded(self.ann, _finish(), timeout)
            except (NodeFailure, RemoteError) as exc:
                if self.owed:
                    logger.info("node %s did not deliver its last receipts: %s", self.ann.peer_id[-8:], exc)
        self._give_up_owed()

    def forgive_owed(self) -> None:
        """The node closed the session on idle before we read what it owed (its stream is gone):
        those receipts are lost to us (the node still ships them), not held against it."""
        for result in self.owed:
            logger.info("node %s closed the session on idle with a receipt still owed; not held against it",
                        self.ann.peer_id[-8:])
            result.receipt_owed, result.receipt_forgiven = False, True
        self.owed.clear()

    def _give_up_owed(self) -> None:
        for result in self.owed:
            logger.info("node %s sent no receipt for a result", self.ann.peer_id[-8:])
            result.receipt_owed = False
        self.owed.clear()

    def settle_receipts(self) -> None:
        """Queue the counter-signatures of our receipts checked so far (oldest first) for the
        next frame, then raise the first failure (NodeFailure for an invalid receipt). Checks
        not run yet (their receipt is still owed) stay for later."""
        failure = None
        while self.unchecked and self.unchecked[0].done():
            try:
                signed = self.unchecked.pop(0).result()
            except Exception as exc:
                failure = failure or exc
                continue
            self.pending_acks.append([signed.id, signed.client_signature])
        if failure is not None:
            raise failure

    def _ack_frames(self) -> list[Frame]:
        if not self.pending_acks:
            return []
        acks, self.pending_acks = self.pending_acks, []
        return [Frame("ack", {"acks": acks})]

    async def close(self) -> None:
        self._give_up_owed()
        if self._writer is None:
            return
        writer, self._writer, self._reader = self._writer, None, None
        try:
            await asyncio.wait_for(write_frames(writer, [*self._ack_frames(), Frame("close")]), 1.0)
        except Exception:
            pass
        writer.close()

    def prefix(self, positions: int) -> torch.Tensor | None:
        """The first `positions` inputs sent (the current step's may follow: a node can fail after
        answering, e.g. with an invalid receipt, and replay must not include that step twice)."""
        if positions == 0 or not self.history:
            return None
        return torch.cat(self.history, dim=1)[:, :positions]


async def send_acks(conn: SwarmConnection, ann: NodeAnnouncement, acks: list[list[bytes]]) -> None:
    """Deliver counter-signatures for forward/backward receipts (best effort, off the hot path)."""
    try:
        await asyncio.wait_for(conn.call(ann, "ack", Frame("ack", {"acks": acks})), 10.0)
    except Exception:
        pass


def new_session_id() -> bytes:
    return os.urandom(16)
