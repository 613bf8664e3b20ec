"""Nodes' work as the verifier sees it: honest and cheating, built from real BlockSpans.

`HonestNode` computes a span with `models.span.BlockSpan`, signs a Receipt v1 exactly as
protocol/README.md describes (input hash, output hash, Merkle root over per-block output
digests), and keeps per receipt what a challenge opens. Each cheater below changes one
thing. They live in tests only: nothing here ships in node/.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from models.manifest_builder import load_manifest
from models.span import BlockSpan
from protocol.identity import Identity
from protocol.merkle import block_proof, block_root
from protocol.receipts import Kind, Receipt, SignedReceipt
from protocol.tensor_hash import tensor_digest
from verifier.openings import Openings


@dataclass
class Work:
    """What a node keeps about one receipt for its retention window."""

    signed: SignedReceipt
    block_inputs: list[torch.Tensor]  # per block: input rows over the whole prefix
    block_outputs: list[torch.Tensor]  # per block: output rows of the step
    sent: torch.Tensor  # what went back to the client


@dataclass
class Delivery:
    """One call's result as the client gets it."""

    output: torch.Tensor
    signed: SignedReceipt


class HonestNode:
    """Serves blocks [start, end) honestly in `dtype` on the CPU.

    Honest nodes differ in ways the verifier's tolerance must absorb: `threads` (torch's
    intra-op thread count while computing) and `attention` ("math": the SDPA math kernel
    instead of the fused one torch picks) are two of them.
    """

    name = "honest"

    def __init__(
        self,
        model_dir: Path,
        start: int,
        end: int,
        *,
        dtype: torch.dtype = torch.float32,
        identity: Identity | None = None,
        threads: int | None = None,
        attention: str | None = None,
    ):
        self.model_dir = Path(model_dir)
        self.start, self.end, self.dtype = start, end, dtype
        self.threads, self.attention = threads, attention
        self.identity = identity or Identity.generate()
        self.span = self._load_span()
        self.model = load_manifest(model_dir).manifest_hash()
        self.work: dict[bytes, Work] = {}
        self.sessions: dict[bytes, list[list[torch.Tensor]]] = {}  # per-block input prefix
        self.caches: dict[bytes, object] = {}  # attention caches of inference sessions

    def _load_span(self) -> BlockSpan:
        return BlockSpan.load(self.model_dir, self.start, self.end, dtype=self.dtype)

    # ----- what cheaters override ----------------------------------------------------------
    def compute(self, prefix_inputs: torch.Tensor, new: int) -> list[torch.Tensor]:
        """Per-block outputs of the last `new` positions, given the span input over the prefix."""
        outs, x = [], prefix_inputs
        for i in range(self.start, self.end):
            y = self.span.block_forward(i, x)
            outs.append(y[:, -new:])
            x = y
        return outs

    def _step_cached(self, session_id: bytes, hidden: torch.Tensor) -> list[torch.Tensor]:
        cache = self.caches.get(session_id)
        if cache is None:
            cache = self.caches[session_id] = self.span.new_cache(hidden.shape[0], 512)
        _, outs = self.span.step(hidden, cache, block_outputs=True)
        return [o.contiguous() for o in outs]

    def receipt_output(
        self, outs: list[torch.Tensor], hidden: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(output committed in the receipt, output sent to the client)."""
        return outs[-1], outs[-1]

    @contextmanager
    def kernels(self) -> Iterator[None]:
        """The thread count and attention kernel this node computes with."""
        old = torch.get_num_threads()
        with ExitStack() as stack:
            if self.attention == "math":
                from torch.nn.attention import SDPBackend, sdpa_kernel

                stack.enter_context(sdpa_kernel(SDPBackend.MATH))
            if self.threads is not None:
                torch.set_num_threads(self.threads)
                stack.callback(torch.set_num_threads, old)
            yield

    # ----- serving --------------------------------------------------------------------------
    def call(
        self,
        client: Identity,
        hidden: torch.Tensor,
        *,
        kind: Kind = Kind.FORWARD,
        session_id: bytes | None = None,
        step: int = 0,
    ) -> Delivery:
        """One forward call (or one inference step of `session_id`) on `hidden` [B, new, H]."""
        hidden = hidden.to(self.dtype)
        session_id = session_id or os.urandom(16)
        new = hidden.shape[1]
        history = self.sessions.setdefault(session_id, [[] for _ in range(self.start, self.end + 1)])
        span_input = torch.cat([*history[0], hidden], dim=1)
        with torch.no_grad(), self.kernels():
            if kind == Kind.INFERENCE and type(self).compute is HonestNode.compute:
                outs = self._step_cached(session_id, hidden)  # what a real node does: attend to its cache
            else:
                outs = [o.contiguous() for o in self.compute(span_input, new)]
        block_inputs = [span_input]
        for k in range(1, self.end - self.start):
            block_inputs.append(torch.cat([*history[k], outs[k - 1]], dim=1))
        if kind == Kind.INFERENCE:
            history[0].append(hidden)
            for k in range(1, self.end - self.start):
                history[k].append(outs[k - 1])
        committed, sent = self.receipt_output(outs, hidden)
        receipt = Receipt(
            node_key=self.identity.public_key,
            client_key=client.public_key,
            model=self.model,
            block_start=self.start,
            block_end=self.end,
            kind=kind,
            session_id=session_id,
            step=step,
            batch=hidden.shape[0],
            tokens=hidden.shape[0] * new,
            input_hash=tensor_digest(hidden),
            output_hash=tensor_digest(committed),
            blocks_root=block_root([tensor_digest(o) for o in outs]),
            request_ref=os.urandom(32),
            timestamp_ms=int(time.time() * 1000),
        )
        signed = receipt.sign(self.identity)
        self.work[signed.id] = Work(signed, block_inputs, outs, sent)
        return Delivery(sent, signed)

    def open(self, receipt_id: bytes, block: int) -> Openings:
        """What the `open` RPC answers: block input over the prefix, step output, proofs, leaves."""
        w = self.work[receipt_id]
        k = block - self.start
        leaves = [tensor_digest(o) for o in w.block_outputs]
        return Openings(
            receipt=w.signed,
            block=block,
            inputs=w.block_inputs[k],
            output=w.block_outputs[k],
            proof=block_proof(leaves, k),
            leaf_index=k,
            num_leaves=len(leaves),
            input_proof=block_proof(leaves, k - 1) if k > 0 else None,
            leaves=leaves,
        )


class NoiseNode(HonestNode):
    """Returns random activations of the right scale instead of computing."""

    name = "noise"

    def compute(self, prefix_inputs: torch.Tensor, new: int) -> list[torch.Tensor]:
        x = prefix_inputs[:, -new:]
        return [torch.randn_like(x) * x.float().std().to(x.dtype) for _ in range(self.start, self.end)]


class OtherModelNode(HonestNode):
    """Runs the same architecture with other weights (another seed) under the model's name."""

    name = "other_model"

    def __init__(self, model_dir: Path, start: int, end: int, *, other_model_dir: Path, **kw: object):
        self.other_model_dir = Path(other_model_dir)
        super().__init__(model_dir, start, end, **kw)  # type: ignore[arg-type]

    def _load_span(self) -> BlockSpan:
        return BlockSpan.load(self.other_model_dir, self.start, self.end, dtype=self.dtype)


class SkipBlockNode(HonestNode):
    """Skips one block of its span (passes its input through) and claims it ran."""

    name = "skip_block"

    def __init__(self, *args: object, skip: int | None = None, **kw: object):
        super().__init__(*args, **kw)  # type: ignore[arg-type]
        self.skip = self.end - 1 if skip is None else skip

    def compute(self, prefix_inputs: torch.Tensor, new: int) -> list[torch.Tensor]:
        outs, x = [], prefix_inputs
        for i in range(self.start, self.end):
            y = x if i == self.skip else self.span.block_forward(i, x)
            outs.append(y[:, -new:])
            x = y
        return outs


class QuantizedNode(HonestNode):
    """Runs int8 or nf4 weights (bitsandbytes) while its receipts and openings announce
    `dtype` (float32 by default; bfloat16 is the hard case, verifier/precision.py)."""

    def __init__(self, *args: object, quantize: str = "int8", **kw: object):
        self.quantize = quantize
        self.name = quantize
        super().__init__(*args, **kw)  # type: ignore[arg-type]

    def _load_span(self) -> BlockSpan:
        return BlockSpan.load(self.model_dir, self.start, self.end, dtype=self.dtype, quantize=self.quantize)


class ReplayNode(HonestNode):
    """Computes its first request honestly, then serves that output again for every request."""

    name = "replay"

    def __init__(self, *args: object, **kw: object):
        super().__init__(*args, **kw)  # type: ignore[arg-type]
        self.first: list[torch.Tensor] | None = None

    def compute(self, prefix_inputs: torch.Tensor, new: int) -> list[torch.Tensor]:
        if self.first is None or self.first[0].shape[:2] != prefix_inputs[:, -new:].shape[:2]:
            self.first = super().compute(prefix_inputs, new)
        return [o.clone() for o in self.first]


class MismatchNode(HonestNode):
    """Signs a receipt for the honest output but sends the client something else."""

    name = "receipt_mismatch"

    def _step_cached(self, session_id: bytes, hidden: torch.Tensor) -> list[torch.Tensor]:
        cache = self.caches.get(session_id)
        if cache is None:
            cache = self.caches[session_id] = self.span.new_cache(hidden.shape[0], 512)
        _, outs = self.span.step(hidden, cache, block_outputs=True)
        return [o.contiguous() for o in outs]

    def receipt_output(
        self, outs: list[torch.Tensor], hidden: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return outs[-1], outs[-1] + 0.5 * torch.randn_like(outs[-1])


@dataclass
class Client:
    """A client that acknowledges a receipt only if it received what the receipt commits to."""

    identity: Identity = field(default_factory=Identity.generate)

    def receive(self, d: Delivery) -> SignedReceipt:
        if tensor_digest(d.output) == d.signed.receipt.output_hash:
            return d.signed.countersign(self.identity)
        return d.signed

    def chain(self, nodes: list[HonestNode], hidden: torch.Tensor, **kw: object) -> list[SignedReceipt]:
        """Pass `hidden` through the nodes in order (one session id for the whole chain, so
        the hops' receipts can be matched); returns each node's (acknowledged?) receipt."""
        receipts = []
        kw.setdefault("session_id", os.urandom(16))
        for node in nodes:
            time.sleep(0.002)  # distinct millisecond timestamps, as real calls have
            d = node.call(self.identity, hidden, **kw)  # type: ignore[arg-type]
            receipts.append(self.receive(d))
            hidden = d.output
        return receipts


ADVERSARIES = ("noise", "other_model", "skip_block", "int8", "nf4", "replay", "receipt_mismatch")
