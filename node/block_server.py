"""The node's RPC handlers: forward, backward and inference sessions over P2P streams.

Each handler validates its request (model, span, shapes, dtypes, sizes, session length)
and answers with a `result` frame or an `error` frame that says what was wrong; a bad
request never takes the node down. Compute goes through the task queue (one worker
thread), forwards and inference steps one block at a time (node/block_steps.py) so a
more urgent task can run between blocks; the event loop moves bytes, and computes a short
decode step of the node's only session itself when the queue is idle (no thread
hand-off: node/task_pool.py). Frame formats: protocol/messages.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Generator
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch

from node.block_steps import forward_blocks, step_blocks
from node.cache_budget import CacheBudget
from node.receipt_signing import HeldReceipts
from node.task_queue import TaskInfo, TaskQueue
from node.ticket_check import FREE, TicketDecision
from protocol.messages import (
    ACTIVATION_DTYPES,
    DEFAULT_MAX_PAYLOAD_BYTES,
    HANDLERS,
    ErrorCode,
    Frame,
    RequestMeta,
    ResponseMeta,
    WireError,
    discard,
    error_frame,
    read_frame,
    receipt_batch,
    tensor_from_wire,
    tensor_to_wire,
    write_frame,
    write_frames,
)

logger = logging.getLogger("corolla.node")


@dataclass
class ServerLimits:
    max_cache_tokens: int = 65536  # sum over open sessions of batch × max_length
    max_session_length: int = 8192
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES
    session_idle_timeout_s: float = 300.0


class BlockServer:
    """Serves one BlockSpan of one model to any peer that opens a stream to it."""

    def __init__(self, span: Any, manifest_hash: bytes, queue: TaskQueue, limits: ServerLimits,
                 receipts: Any = None, tickets: Any = None):
        self.span = span
        self.manifest_hash = manifest_hash
        self.queue = queue
        self.limits = limits
        self.budget = CacheBudget(limits.max_cache_tokens)
        self.receipts = receipts  # node.receipt_signing.ReceiptSigner or None
        self.tickets = tickets  # node.ticket_check.TicketGate or None (every request is free)
        self.open_sessions = 0
        self.requests_served = 0

    async def add_handlers(self, p2p: Any) -> None:
        await p2p.add_binary_stream_handler(HANDLERS["forward"], self._guard(self._forward))
        await p2p.add_binary_stream_handler(HANDLERS["backward"], self._guard(self._backward))
        await p2p.add_binary_stream_handler(HANDLERS["inference"], self._guard(self._inference))
        if self.receipts is not None:
            await p2p.add_binary_stream_handler(HANDLERS["open"], self._guard(self.receipts.handle_open))
            await p2p.add_binary_stream_handler(HANDLERS["ack"], self._guard(self.receipts.handle_ack))

    def _guard(self, handler: Any) -> Any:
        """Wrap a stream handler: errors become error frames, the stream is always closed."""

        async def run(stream_info: Any, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            peer = str(stream_info.peer_id)[-8:]
            try:
                await handler(peer, reader, writer)
            except asyncio.IncompleteReadError:
                pass  # the peer went away; nothing to answer
            except WireError as exc:
                logger.info("refused request from %s: %s", peer, exc)
                with contextlib.suppress(Exception):
                    if 0 < exc.unread_bytes <= 16 * self.limits.max_payload_bytes:
                        await asyncio.wait_for(discard(reader, exc.unread_bytes), 30.0)
                    await write_frame(writer, error_frame(exc.code, str(exc)))
                    # linger until the peer hangs up, so frames it already sent don't reset the
                    # stream before it has read our answer
                    await asyncio.wait_for(discard(reader, self.limits.max_payload_bytes), 2.0)
            except (ConnectionError, asyncio.CancelledError):
                pass
            except Exception as exc:  # internal: keep the traceback in the log, tell the client
                logger.exception("internal error serving %s", peer)
                with contextlib.suppress(Exception):
                    await write_frame(writer, error_frame(ErrorCode.INTERNAL, f"{type(exc).__name__}: {exc}"))
            finally:
                with contextlib.suppress(Exception):
                    writer.close()

        return run

    # ----- validation ------------------------------------------------------------------

    def _check_request(self, frame: Frame, kind: str, n_tensors: int) -> RequestMeta:
        if frame.kind != kind:
            raise WireError(ErrorCode.BAD_REQUEST, f"expected a {kind!r} frame, got {frame.kind!r}")
        meta = RequestMeta.from_meta(frame.meta)
        if meta.model != self.manifest_hash:
            raise WireError(ErrorCode.UNKNOWN_MODEL,
                            f"this node serves model {self.manifest_hash.hex()[:16]}…, not {meta.model.hex()[:16]}…")
        if (meta.start, meta.end) != (self.span.start, self.span.end):
            raise WireError(ErrorCode.WRONG_BLOCKS,
                            f"this node serves blocks {self.span.start}:{self.span.end}, not {meta.start}:{meta.end}")
        if len(frame.tensors) != n_tensors:
            raise WireError(ErrorCode.BAD_REQUEST, f"{kind} takes {n_tensors} tensor(s), got {len(frame.tensors)}")
        return meta

    def _hidden(self, frame: Frame, index: int, name: str) -> torch.Tensor:
        wire = frame.tensors[index]
        if wire.dtype not in ACTIVATION_DTYPES:
            raise WireError(ErrorCode.BAD_REQUEST, f"{name} must be one of {ACTIVATION_DTYPES}, got {wire.dtype}")
        shape = wire.shape
        if len(shape) != 3 or shape[0] < 1 or shape[1] < 1 or shape[2] != self.span.hidden_size:
            raise WireError(ErrorCode.BAD_REQUEST,
                            f"{name} must have shape [batch, seq, {self.span.hidden_size}], got {list(shape)}")
        tensor = tensor_from_wire(wire)
        return tensor.to(self.span.dtype) if tensor.dtype != self.span.dtype else tensor

    # ----- priority tickets --------------------------------------------------------------

    def _decide(self, meta: RequestMeta, tokens: int) -> TicketDecision:
        """Paid or free, checked offline against the ledger keys this node trusts."""
        if self.tickets is None or not meta.ticket:
            return FREE
        return self.tickets.decide(meta.ticket, meta.client_key, tokens, meta.priority)

    async def _run(self, info_kind: str, meta: RequestMeta, tokens: int, fn: Any, *args: Any) -> tuple[Any, Any, TicketDecision]:
        decision = self._decide(meta, tokens)
        info = TaskInfo(info_kind, tokens, decision.price_per_token if decision.paid else 0, meta.client_key,
                        sole_session=info_kind == "inference" and self.open_sessions == 1)
        try:
            out, receipt = await self.queue.submit(info, fn, *args, decision)
        except BaseException:
            if self.tickets is not None:
                self.tickets.refund(decision)
            raise
        return out, receipt, decision

    # ----- forward / backward ----------------------------------------------------------

    async def _forward(self, peer: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        frame = await read_frame(reader, self.limits.max_payload_bytes)
        meta = self._check_request(frame, "forward", 1)
        hidden = self._hidden(frame, 0, "hidden states")
        started = time.perf_counter()
        out, receipt, decision = await self._run("forward", meta, hidden.shape[0] * hidden.shape[1],
                                                 self._compute_forward, meta, frame, hidden)
        await self._reply(writer, out, receipt, started, decision)

    def _compute_forward(self, meta: RequestMeta, frame: Frame, hidden: torch.Tensor,
                         decision: TicketDecision) -> Generator[None, None, tuple[torch.Tensor, Any]]:
        """A task in steps (node/task_queue.py): one block per step, so the pool can run a more
        urgent task between blocks; then the receipt."""
        per_block: list[torch.Tensor] = []
        for out in forward_blocks(self.span, hidden):
            if self.receipts is not None:
                per_block.append(out)
            yield
        if self.receipts is None:
            return out, None
        return out, self.receipts.sign_call("forward", meta, frame.tensors[0], out, per_block, hidden, decision)

    async def _backward(self, peer: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        frame = await read_frame(reader, self.limits.max_payload_bytes)
        meta = self._check_request(frame, "backward", 2)
        hidden = self._hidden(frame, 0, "hidden states")
        grad_out = self._hidden(frame, 1, "output gradient")
        if grad_out.shape != hidden.shape:
            raise WireError(ErrorCode.BAD_REQUEST,
                            f"output gradient shape {list(grad_out.shape)} != hidden shape {list(hidden.shape)}")
        started = time.perf_counter()
        grad_in, receipt, decision = await self._run("backward", meta, hidden.shape[0] * hidden.shape[1],
                                                     self._compute_backward, meta, frame, hidden, grad_out)
        await self._reply(writer, grad_in, receipt, started, decision)

    def _compute_backward(self, meta: RequestMeta, frame: Frame, hidden: torch.Tensor, grad_out: torch.Tensor,
                          decision: TicketDecision) -> tuple[torch.Tensor, Any]:
        grad_in = self.span.backward(hidden, grad_out)
        receipt = None
        if self.receipts is not None:
            receipt = self.receipts.sign_backward(meta, frame.tensors[1], grad_in, hidden, decision)
        return grad_in, receipt

    async def _reply(self, writer: asyncio.StreamWriter, out: torch.Tensor, receipt: Any, started: float,
                     decision: TicketDecision = FREE) -> None:
        response = ResponseMeta(receipt=receipt or b"", compute_ms=(time.perf_counter() - started) * 1e3,
                                notice=decision.message)
        try:
            await write_frame(writer, Frame("result", response.to_meta(), [tensor_to_wire(out)]))
        finally:
            if self.receipts is not None:
                self.receipts.replied()  # the outbox writer stores the receipt now, off the reply's path
        self.requests_served += 1

    # ----- inference sessions ----------------------------------------------------------

    async def _inference(self, peer: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        frame = await read_frame(reader, self.limits.max_payload_bytes)
        meta = self._check_request(frame, "open_session", 0)
        try:
            batch, max_length = int(frame.meta["batch"]), int(frame.meta["max_length"])
        except (KeyError, TypeError, ValueError):
            raise WireError(ErrorCode.BAD_REQUEST, "open_session needs integer batch and max_length") from None
        if batch < 1 or max_length < 1:
            raise WireError(ErrorCode.BAD_REQUEST, "batch and max_length must be positive")
        receipts_held = receipt_batch(frame.meta) if frame.meta.get("receipt_with_next") is True else 1
        if max_length > self.limits.max_session_length:
            raise WireError(ErrorCode.TOO_LONG,
                            f"max_length {max_length} exceeds this node's limit of {self.limits.max_session_length}")
        session_id = meta.session_id or os.urandom(16)
        if not self.budget.reserve(session_id, batch * max_length):
            raise WireError(ErrorCode.BUSY,
                            f"not enough attention-cache memory for batch {batch} × {max_length} tokens "
                            f"({self.budget.used}/{self.budget.max_tokens} reserved); try another node")
        self.open_sessions += 1
        try:
            cache = self.span.new_cache(batch, max_length)
            state = None if self.receipts is None else self.receipts.new_session(meta, batch, max_length)
            logger.info("session %s from %s opened (batch %d, max_length %d)", session_id.hex()[:8], peer,
                        batch, max_length)
            held = None
            if state is not None and frame.meta.get("receipt_with_next") is True:
                held = HeldReceipts(self.receipts, receipts_held)
            try:
                await self._session_loop(reader, writer, meta, cache, state, held)
            finally:
                if held is not None:  # answered steps whose receipts were not sent: our own evidence
                    held.take()
        finally:
            if self.receipts is not None:
                self.receipts.replied()  # acks that came with `close` (or before a failure)
            self.open_sessions -= 1
            self.budget.release(session_id)
            logger.info("session %s closed", session_id.hex()[:8])

    async def _session_loop(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, meta: RequestMeta,
                            cache: Any, state: Any, held: HeldReceipts | None = None) -> None:
        """Steps until `close`. With `held` (the client asked for `receipt_with_next`), a step's
        receipt is signed once its result is sent, `held.every` steps at a time, and travels
        in front of this node's next answer on the stream, in the same write
        (protocol/messages.py)."""
        owed: list[Frame] = []  # receipt frames signed and stored but not sent yet
        while True:
            try:
                frame = await asyncio.wait_for(read_frame(reader, self.limits.max_payload_bytes),
                                               self.limits.session_idle_timeout_s)
            except TimeoutError:
                owed += held.take() if held is not None else []
                if owed:  # the client's evidence goes out before we give up
                    await write_frames(writer, owed)
                raise WireError(ErrorCode.NOT_FOUND, "session closed after being idle too long") from None
            if frame.kind == "close":
                return
            if frame.kind == "ack":  # rides with the next step: stored after that step's reply
                if self.receipts is not None:
                    self.receipts.queue_ack(frame.meta, hold=True)
                continue
            if frame.kind == "finish":  # the client collects what we owe before it closes
                owed += held.take() if held is not None else []
                await write_frames(writer, [*owed, Frame("finished")])
                owed = []
                continue
            if frame.kind != "step" or len(frame.tensors) != 1:
                raise WireError(ErrorCode.BAD_REQUEST, f"expected a step frame with one tensor, got {frame.kind!r}")
            hidden = self._hidden(frame, 0, "hidden states")
            if hidden.shape[0] != cache.batch:
                raise WireError(ErrorCode.BAD_REQUEST, f"session batch is {cache.batch}, step has {hidden.shape[0]}")
            if cache.length + hidden.shape[1] > cache.max_length:
                owed += held.take() if held is not None else []
                await write_frames(writer, [*owed, error_frame(
                    ErrorCode.TOO_LONG,
                    f"session max_length is {cache.max_length}: {cache.length} positions used, "
                    f"{hidden.shape[1]} more requested; open a longer session")])
                owed = []
                continue
            step = int(frame.meta.get("step", 0))
            started = time.perf_counter()
            out, receipt, decision = await self._run("inference", meta, hidden.shape[0] * hidden.shape[1],
                                                     self._compute_step, frame, hidden, cache, state, step,
                                                     held is not None)
            if held is not None:
                owed = await self._reply_then_sign(writer, owed, held, out, receipt, started, decision)
            else:
                await self._reply(writer, out, receipt, started, decision)

    async def _reply_then_sign(self, writer: asyncio.StreamWriter, owed: list[Frame], held: HeldReceipts,
                               out: torch.Tensor, sign: Any, started: float, decision: TicketDecision) -> list[Frame]:
        """The receipts owed and this result in one write; then this result's receipt joins
        `held`, which signs and stores the held ones every `held.every` steps (the client has
        the output; the next hop computes meanwhile): the receipts the next answer carries."""
        response = ResponseMeta(compute_ms=(time.perf_counter() - started) * 1e3, notice=decision.message,
                                receipt_follows=True)
        await write_frames(writer, [*owed, Frame("result", response.to_meta(), [tensor_to_wire(out)])])
        self.requests_served += 1
        return held.add(sign)

    def _compute_step(self, frame: Frame, hidden: torch.Tensor, cache: Any, state: Any, step: int,
                      deferred: bool, decision: TicketDecision) -> Generator[None, None, tuple[torch.Tensor, Any]]:
        """A task in steps, one block per step (as _compute_forward); then the receipt, or with
        `deferred` a function that signs it once the result is sent."""
        per_block: list[torch.Tensor] = []
        for out in step_blocks(self.span, hidden, cache):
            if state is not None:
                per_block.append(out)
            yield
        if state is None:
            return out, None
        if deferred:
            return out, partial(self.receipts.sign_step, state, frame, hidden, out, per_block, step, decision)
        return out, self.receipts.sign_step(state, frame, hidden, out, per_block, step, decision)
