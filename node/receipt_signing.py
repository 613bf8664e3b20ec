"""Signed receipts on the node: one per forward, backward and inference step.

For each step the node commits to the input it received (digest of the wire tensor), the
output it sends (digest of the wire tensor) and a Merkle root over its blocks' outputs,
signs the receipt and keeps what a challenge needs (node/openings.py). Forward and
backward receipts are signed between compute and reply and go to the outbox through its
group-commit writer (node/receipt_outbox.py), held until the block server has written the
reply (`replied()`) and stored moments later: a node killed in those few ms loses them
from its own outbox (the client holds them either way). An inference step's receipt
(`receipt_with_next`, protocol/messages.py) is signed after its result is sent, the
client's `receipt_batch` steps at a time (`HeldReceipts`, used by node/block_server.py), and
stored at once on the event loop (`replied(store_here=True)`), together with the
counter-signatures that came meanwhile, before the node's next answer delivers it.
Client counter-signatures arrive as `ack` frames (a session's ride with its next step;
forward and backward ones come by the `ack` RPC) and are checked (Ed25519) and stored
behind their receipts: a receipt is durable before its counter-signature is stored, and
the `ack` RPC answers `ok` only once both are on disk.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from node.openings import RetentionStore, SessionRecord, StepRecord, step_record
from node.receipt_outbox import OutboxWriter, ReceiptOutbox, default_outbox_path
from node.ticket_check import FREE, TicketDecision
from protocol.identity import Identity
from protocol.merkle import block_root
from protocol.messages import Frame, RequestMeta, WireTensor, read_frame, wire_digest, write_frame
from protocol.receipts import ZERO32, Kind, Receipt, SignedReceipt, request_ref_for_step
from protocol.tensor_hash import tensor_digest

logger = logging.getLogger("corolla.node")


def _output_hash(out: torch.Tensor, per_block: list[torch.Tensor], record: StepRecord) -> bytes:
    """The last block's output is the span's output: its leaf is the output hash (hashed once)."""
    return record[2][-1] if per_block and out is per_block[-1] else tensor_digest(out)


def _bytes32(value: bytes) -> bytes:
    return value if len(value) == 32 else ZERO32


@dataclass
class SessionState:
    meta: RequestMeta
    session_id: bytes
    record: SessionRecord = field(default_factory=SessionRecord)


class ReceiptSigner:
    def __init__(self, identity: Identity, outbox: ReceiptOutbox, span: Any, manifest_hash: bytes,
                 shipper: Any = None, retention: RetentionStore | None = None):
        self.identity = identity
        self.public_key = identity.public_key
        self.outbox = outbox
        self.span = span
        self.manifest_hash = manifest_hash
        self.shipper = shipper
        self.retention = retention or RetentionStore()
        # Receipts and acks are stored, and acks checked (Ed25519), on the writer's thread, in
        # arrival order, once the reply of the step in flight has left.
        self.writer = OutboxWriter(outbox, self._client_key_for)

    @classmethod
    def from_config(cls, key_path: str, outbox_path: str | None, ledger_url: str | None, span: Any,
                    manifest_hash: bytes) -> ReceiptSigner:
        identity = Identity.load_or_create(key_path)
        outbox = ReceiptOutbox(outbox_path or default_outbox_path(key_path), synchronous="NORMAL")
        shipper = None
        if ledger_url:
            from node.receipt_shipper import ReceiptShipper

            shipper = ReceiptShipper(outbox, ledger_url, identity)
        return cls(identity, outbox, span, manifest_hash, shipper)

    async def start(self) -> None:
        if self.shipper is not None:
            self.shipper.start()

    @property
    def unknown_acks(self) -> int:
        return self.writer.unknown_acks

    def _client_key_for(self, receipt_id: bytes) -> bytes | None:
        return self.retention.client_key(receipt_id)

    async def stop(self) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self.writer.close)
        if self.shipper is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.shipper.stop)
        self.outbox.close()

    # ----- signing (compute thread) ------------------------------------------------------

    def _sign(self, kind: Kind, meta: RequestMeta, session_id: bytes, step: int, batch: int, tokens: int,
              input_hash: bytes, output_hash: bytes, leaves: list[bytes], request_ref: bytes,
              decision: TicketDecision) -> SignedReceipt:
        receipt = Receipt(
            node_key=self.public_key, client_key=_bytes32(meta.client_key), model=self.manifest_hash,
            block_start=self.span.start, block_end=self.span.end, kind=kind, session_id=session_id, step=step,
            batch=batch, tokens=tokens, input_hash=input_hash, output_hash=output_hash,
            blocks_root=block_root(leaves), request_ref=_bytes32(request_ref),
            timestamp_ms=int(time.time() * 1000),
            ticket_id=decision.ticket_id if decision.paid else ZERO32, price=decision.charge if decision.paid else 0)
        signed = receipt.sign(self.identity)
        # stored by the writer thread, before any ack of it; held (the writer thread sleeps on)
        # until the reply carrying it is written: see replied()
        self.writer.append(signed, hold=True)
        return signed

    def replied(self, *, store_here: bool = False) -> None:
        """The reply of a step is written (or failed), or a session ended: let the writer store
        what was held (receipts, acks); with `store_here`, store it now in this thread."""
        if store_here:
            self.writer.store_held()
        else:
            self.writer.release()

    def sign_call(self, kind_name: str, meta: RequestMeta, input_wire: WireTensor, out: torch.Tensor,
                  per_block: list[torch.Tensor], hidden: torch.Tensor, decision: TicketDecision = FREE) -> bytes:
        """Forward: commit to the received input, the output and every block's output."""
        record = step_record(hidden, per_block)
        session_id = meta.session_id if len(meta.session_id) == 16 else os.urandom(16)
        batch, length = hidden.shape[0], hidden.shape[1]
        signed = self._sign(Kind.FORWARD, meta, session_id, meta.step, batch, batch * length,
                            wire_digest(input_wire), _output_hash(out, per_block, record), list(record[2]),
                            meta.request_ref, decision)
        session = SessionRecord()
        session.steps.append(record)
        self.retention.add(signed, session, 0)
        return signed.to_bytes()

    def sign_backward(self, meta: RequestMeta, grad_wire: WireTensor, grad_in: torch.Tensor,
                      hidden: torch.Tensor, decision: TicketDecision = FREE) -> bytes:
        """Backward: input = incoming output gradient, output = input gradient, root = forward blocks."""
        with torch.inference_mode():
            _, per_block = self.span.forward(hidden, block_outputs=True)
        record = step_record(hidden, per_block)
        session_id = meta.session_id if len(meta.session_id) == 16 else os.urandom(16)
        batch, length = hidden.shape[0], hidden.shape[1]
        signed = self._sign(Kind.BACKWARD, meta, session_id, meta.step, batch, batch * length,
                            wire_digest(grad_wire), tensor_digest(grad_in), list(record[2]), meta.request_ref,
                            decision)
        session = SessionRecord()
        session.steps.append(record)
        self.retention.add(signed, session, 0)
        return signed.to_bytes()

    def new_session(self, meta: RequestMeta, batch: int, max_length: int) -> SessionState:
        session_id = meta.session_id if len(meta.session_id) == 16 else os.urandom(16)
        return SessionState(meta, session_id)

    def sign_step(self, state: SessionState, frame: Frame, hidden: torch.Tensor, out: torch.Tensor,
                  per_block: list[torch.Tensor], step: int, decision: TicketDecision = FREE) -> bytes:
        record = step_record(hidden, per_block)
        batch, new = hidden.shape[0], hidden.shape[1]
        ref = frame.meta.get("request_ref") or request_ref_for_step(state.session_id, step)
        signed = self._sign(Kind.INFERENCE, state.meta, state.session_id, step, batch, batch * new,
                            wire_digest(frame.tensors[0]), _output_hash(out, per_block, record), list(record[2]),
                            bytes(ref), decision)
        state.record.steps.append(record)
        self.retention.add(signed, state.record, len(state.record.steps) - 1)
        return signed.to_bytes()

    # ----- acknowledgements (event loop) -------------------------------------------------

    def queue_ack(self, meta: dict[str, Any], *, hold: bool = False) -> None:
        """Queue client counter-signatures [(receipt_id, signature), ...] for the writer, which
        checks and stores them after their receipts (malformed entries are ignored). With
        `hold` (acks riding with an inference step) they wait for the step's `replied()`."""
        acks = meta.get("acks")
        for entry in acks if isinstance(acks, list) else []:
            try:
                receipt_id, signature = entry
                self.writer.attach(bytes(receipt_id), bytes(signature), hold=hold)
            except (TypeError, ValueError):
                self.writer.bad_acks += 1

    def accept_ack(self, meta: dict[str, Any]) -> None:
        """queue_ack, then wait until what was queued (so these acks too) is stored."""
        self.queue_ack(meta)
        self.writer.flush().result()

    async def handle_ack(self, peer: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        frame = await read_frame(reader, 1 << 20)
        if frame.kind == "ack":  # answer `ok` once the acks (and so their receipts) are durable
            self.queue_ack(frame.meta)
            await asyncio.wrap_future(self.writer.flush())
        await write_frame(writer, Frame("ok"))

    async def handle_open(self, peer: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        frame = await read_frame(reader, 1 << 20)
        await write_frame(writer, self.retention.openings_frame(frame))


class HeldReceipts:
    """An inference session's answered steps whose receipts are not signed yet (`receipt_with_next`).

    Every `every` steps (the client's `receipt_batch`), they are signed and stored in one
    outbox transaction, with the counter-signatures that came meanwhile, and their `receipt`
    frames go in front of the node's next answer. One transaction and one warm pass over
    the signing code for several steps costs the node less per token than one per step.
    """

    def __init__(self, receipts: ReceiptSigner, every: int):
        self.receipts = receipts
        self.every = every
        self._unsigned: list[Callable[[], bytes]] = []

    def add(self, sign: Callable[[], bytes]) -> list[Frame]:
        """Hold one answered step's receipt; the receipt frames to send once `every` are held."""
        self._unsigned.append(sign)
        return self.take() if len(self._unsigned) >= self.every else []

    def take(self) -> list[Frame]:
        """Sign and store every held receipt now (durable on return); their frames, in step order."""
        signed = []
        try:
            for sign in self._unsigned:
                signed.append(Frame("receipt", {"receipt": sign()}))
        finally:
            self._unsigned.clear()
            self.receipts.replied(store_here=True)
        return signed
