"""Forward and backward through all remote blocks as one differentiable torch op.

`RemoteBlocks.apply(hidden)` runs unary `forward` calls along a chain of nodes and
remembers which node saw which input; autograd's backward sends the output gradient
back through the same nodes (`backward` RPC, which recomputes the forward on the node).
A node that fails is banned; forward re-routes the remaining blocks, backward recomputes
the failed hop's blocks on a new chain and backpropagates through that instead.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import torch

from client.remote_calls import CallResult, NodeFailure, call_span, send_acks
from client.swarm_context import SwarmContext
from protocol.dht_keys import NodeAnnouncement
from protocol.messages import RequestMeta
from protocol.receipts import Kind, SignedReceipt

CALL_TIMEOUT_S = 120.0
# (node, input it got, call id, its forward receipt) per hop, in order
Trace = list[tuple[NodeAnnouncement, torch.Tensor, bytes, "SignedReceipt | None"]]


class RemoteBlocks:
    def __init__(self, swarm: SwarmContext):
        self.swarm = swarm
        self._ack_tasks: set[asyncio.Task[None]] = set()

    def apply(self, hidden: torch.Tensor) -> torch.Tensor:
        """Differentiable: blocks [0, n) of the model applied to hidden [B, T, H]."""
        return _RemoteFunction.apply(hidden, self)

    def run_forward(self, hidden: torch.Tensor) -> tuple[torch.Tensor, Trace]:
        return self.swarm.conn.run(self._forward_range(hidden, 0, self.swarm.num_blocks))

    def run_backward(self, trace: Trace, grad: torch.Tensor) -> torch.Tensor:
        return self.swarm.conn.run(self._backward_trace(trace, grad))

    def _accept(self, ann: NodeAnnouncement, meta: RequestMeta, kind: Kind, result: CallResult,
                previous: SignedReceipt | None) -> SignedReceipt | None:
        """Verify and counter-sign the receipt (if we have an identity); ack it in the background."""
        self.swarm.observe(meta, result.response)
        book = self.swarm.receipts
        if book is None:
            return None
        signed = book.verify(ann, meta, kind, meta.step, meta.request_ref, result, previous)
        task = asyncio.get_running_loop().create_task(
            send_acks(self.swarm.conn, ann, [[signed.id, signed.client_signature]]))
        self._ack_tasks.add(task)
        task.add_done_callback(self._ack_tasks.discard)
        return signed

    async def _forward_range(self, hidden: torch.Tensor, start: int, end: int) -> tuple[torch.Tensor, Trace]:
        x, pos, trace, failures, previous = hidden, start, [], 0, None
        while pos < end:
            for ann in await self.swarm.router.route(pos, end):
                call_id = os.urandom(16)
                meta = self.swarm.meta(ann, call_id, 0, request_ref=os.urandom(32))
                try:
                    result = await call_span(self.swarm.conn, ann, "forward", meta, [x], CALL_TIMEOUT_S)
                    previous = self._accept(ann, meta, Kind.FORWARD, result, previous)
                except NodeFailure as failure:
                    failures += 1
                    self.swarm.fail(failure)
                    if failures >= self.swarm.max_attempts:
                        raise
                    previous = trace[-1][3] if trace else None
                    break  # re-route from `pos`
                self.swarm.router.record_rtt(ann.peer_id, result.rtt_s - result.response.compute_ms / 1e3)
                trace.append((ann, x, call_id, previous))
                x, pos = result.output, ann.end
        return x, trace

    async def _backward_trace(self, trace: Trace, grad: torch.Tensor) -> torch.Tensor:
        previous = None
        for ann, x, call_id, _ in reversed(trace):
            meta = self.swarm.meta(ann, call_id, 1, request_ref=os.urandom(32))
            try:
                result = await call_span(self.swarm.conn, ann, "backward", meta, [x, grad], CALL_TIMEOUT_S)
                previous = self._accept(ann, meta, Kind.BACKWARD, result, previous)
                grad = result.output
            except NodeFailure as failure:
                self.swarm.fail(failure)
                _, subtrace = await self._forward_range(x, ann.start, ann.end)
                grad = await self._backward_trace(subtrace, grad)
                previous = None
        return grad


class _RemoteFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, hidden: torch.Tensor, blocks: RemoteBlocks) -> torch.Tensor:  # type: ignore[override]
        out, trace = blocks.run_forward(hidden.detach())
        ctx.blocks, ctx.trace, ctx.dtype = blocks, trace, hidden.dtype
        return out.to(hidden.dtype)

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        grad = ctx.blocks.run_backward(ctx.trace, grad_output.contiguous())
        return grad.to(ctx.dtype), None
