"""Wire format between clients (and verifiers) and nodes: frames on hivemind P2P streams.

Every RPC is a libp2p stream opened with one of the `HANDLERS` protocol names. Both sides
exchange *frames*:

    u32 big-endian header length | header (msgpack map) | tensor bytes, back to back

The header is `{"kind": str, "meta": {...}, "tensors": [[dtype, [dims...]], ...]}`; the
byte length of each tensor follows from its dtype and shape, so payloads travel as raw
bytes with no per-element encoding. Torch-free at import time (the ledger may import this
module); `tensor_to_wire`/`tensor_from_wire` import torch only when called.

RPCs (request kind -> reply kind):

- `forward`:   `forward` frame (meta: RequestMeta + span, tensors: [hidden]) -> `result` (tensors: [out])
- `backward`:  `backward` frame (tensors: [hidden, grad_out]) -> `result` (tensors: [grad_in])
- `inference`: one long-lived stream per session. The client sends `open_session`
  (meta: RequestMeta + span + batch + max_length), then one `step` frame per step
  (meta: {"step": int}, tensors: [new hidden rows, shape [batch, t, hidden]]), each
  answered by a `result`; `ack` frames may come between steps; the
  client ends with `close` (or by closing the stream). The node does not answer
  `open_session` itself; a refused session is answered by an `error` frame. A client
  that puts `"receipt_with_next": true` in `open_session` gets each step's `result`
  without its receipt (meta `receipt_follows: true`, empty `receipt`), so it can pass
  the output on to the next hop at once; the node signs the receipt after sending the
  result and sends it, as a `receipt` frame (meta {"receipt": SignedReceipt.to_bytes()}),
  in front of its next answer on the stream, in the same write: the next `result`, an
  `error`, or `finished`, its answer to a `finish` frame (which the client sends before
  `close` to collect the receipts still owed). Receipts come in step order. Signing thus
  leaves the hop-to-hop critical path, and a receipt costs no frame write of its own.
  With `"receipt_batch": k` (1 to MAX_RECEIPT_BATCH, default 1) next to it, the client
  lets the node hold up to k answered steps' receipts and send them together: after
  any answer, at most k results may still wait for their receipt (a node that owes more
  is faulty). The node signs and stores those k receipts in one go, which costs it less
  per token; the client checks them, and can drop a lying node, up to k steps later.
- `open` (challenges): `open` frame (meta: {"receipt_id": 32 bytes, "block": absolute block
  index}) -> `openings` frame: meta {"receipt": SignedReceipt.to_bytes(), "block": int,
  "leaf_index": block - block_start, "num_leaves": int, "proof": [32-byte nodes] for
  protocol.merkle.verify_block_proof, "leaves": [every per-block output digest of the
  step, in block order], "input_proof": (inner blocks only) proof of leaf leaf_index - 1},
  tensors [block input rows for the whole prefix
  (positions 0..end of the receipt's step; for forward/backward: the call's rows), block
  output rows of the receipt's step]. Check: tensor_digest(outputs) is the leaf and the
  proof leads to receipt.blocks_root; block_forward(block, inputs)[:, -t:] ≈ outputs with
  t = outputs.shape[1]; for block == block_start the last t input rows hash (as sent by
  the client, before any dtype cast) to receipt.input_hash. Unknown or expired receipt ->
  `error` with code not_found.
- `ack`: `ack` frame (meta: {"acks": [[receipt_id, client_signature], ...]}) -> `ok`. The
  same `ack` frame may be sent on an inference stream between steps (no reply there).

A verifier calls `open` with nothing but hivemind's P2P: open a stream with
`p2p.call_binary_stream_handler(peer_id, HANDLERS["open"])`, `write_frame` the request,
`read_frame` the reply.

Any request may instead be answered by an `error` frame: meta {"code": ErrorCode, "message":
str}; the node keeps serving. Replies to requests carry `ResponseMeta` in their meta.
"""

from __future__ import annotations

import asyncio
import struct
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

import msgpack

from protocol.hashing import tensor_digest_raw

PROTOCOL_VERSION = 1
HANDLERS = {
    "forward": "/corolla/forward/1",
    "backward": "/corolla/backward/1",
    "inference": "/corolla/inference/1",
    "open": "/corolla/open/1",
    "ack": "/corolla/ack/1",
}
DTYPE_SIZES = {"float32": 4, "float16": 2, "bfloat16": 2, "int64": 8, "int32": 4, "uint8": 1}
ACTIVATION_DTYPES = ("float32", "float16", "bfloat16")
MAX_HEADER_BYTES = 1 << 20
DEFAULT_MAX_PAYLOAD_BYTES = 256 << 20
MAX_RECEIPT_BATCH = 16  # receipts a node may hold back in an inference session (`receipt_batch`)


class ErrorCode(StrEnum):
    """Why a node refused a request; clients decide on retry vs. fail from this."""

    BAD_REQUEST = "bad_request"  # malformed frame, wrong shapes or dtypes: do not retry
    UNKNOWN_MODEL = "unknown_model"  # manifest hash not served here: re-route
    WRONG_BLOCKS = "wrong_blocks"  # span outside what this node serves: re-route
    TOO_LONG = "too_long"  # session past its max_length: do not retry
    TOO_LARGE = "too_large"  # payload over the node's limit: split or re-route
    BUSY = "busy"  # out of cache memory: re-route
    NOT_FOUND = "not_found"  # unknown or expired receipt / session
    INTERNAL = "internal"  # node-side failure: re-route


class WireError(Exception):
    """A frame that cannot be parsed; the peer gets ErrorCode.BAD_REQUEST or TOO_LARGE."""

    def __init__(self, code: ErrorCode, message: str, unread_bytes: int = 0):
        super().__init__(message)
        self.code = code
        self.unread_bytes = unread_bytes  # payload still in the stream (read it before replying)


@dataclass
class WireTensor:
    """A tensor as bytes: dtype name (torch name without prefix), shape, C-order LE bytes."""

    dtype: str
    shape: tuple[int, ...]
    data: bytes | bytearray | memoryview

    @property
    def nbytes(self) -> int:
        return expected_nbytes(self.dtype, self.shape)


@dataclass
class Frame:
    kind: str
    meta: dict[str, Any] = field(default_factory=dict)
    tensors: list[WireTensor] = field(default_factory=list)


@dataclass
class RequestMeta:
    """What every request says about itself. Bytes fields are raw (empty = absent).

    `request_ref` is the client's own reference (it checks the receipt echoes it);
    `ticket` is a ledger-signed priority ticket (encoded by protocol.tickets) or empty.
    """

    model: bytes  # manifest hash, 32 bytes
    start: int
    end: int
    client_key: bytes = b""
    request_ref: bytes = b""
    session_id: bytes = b""
    step: int = 0
    ticket: bytes = b""
    priority: int = 0

    def to_meta(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> RequestMeta:
        try:
            return cls(
                model=bytes(meta["model"]),
                start=int(meta["start"]),
                end=int(meta["end"]),
                client_key=bytes(meta.get("client_key", b"")),
                request_ref=bytes(meta.get("request_ref", b"")),
                session_id=bytes(meta.get("session_id", b"")),
                step=int(meta.get("step", 0)),
                ticket=bytes(meta.get("ticket", b"")),
                priority=int(meta.get("priority", 0)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise WireError(ErrorCode.BAD_REQUEST, f"malformed request metadata: {exc!r}") from exc


@dataclass
class ResponseMeta:
    """What a node says about a result: its signed receipt and timing.

    `receipt` is `SignedReceipt.to_bytes()` (encoding || node signature), empty when the
    node runs without an identity.
    """

    receipt: bytes = b""
    compute_ms: float = 0.0
    notice: str = ""  # e.g. why an attached priority ticket was not honoured (served free)
    receipt_follows: bool = False  # the receipt comes later on the stream (inference, receipt_with_next)

    def to_meta(self) -> dict[str, Any]:
        # spelled out, not asdict(): this runs once per step on the node's reply path
        return {"receipt": self.receipt, "compute_ms": self.compute_ms, "notice": self.notice,
                "receipt_follows": self.receipt_follows}

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> ResponseMeta:
        receipt = meta.get("receipt") or b""
        return cls(receipt=bytes(receipt) if isinstance(receipt, (bytes, bytearray)) else b"",
                   compute_ms=float(meta.get("compute_ms", 0.0)), notice=str(meta.get("notice", "")),
                   receipt_follows=meta.get("receipt_follows") is True)


def receipt_batch(open_meta: dict[str, Any]) -> int:
    """How many answered steps' receipts the client lets a node hold back (its `open_session`
    meta `receipt_batch`, default 1); more than MAX_RECEIPT_BATCH is held to that."""
    value = open_meta.get("receipt_batch", 1)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise WireError(ErrorCode.BAD_REQUEST,
                        f"receipt_batch must be a positive integer (1 to {MAX_RECEIPT_BATCH}), got {value!r}")
    return min(value, MAX_RECEIPT_BATCH)


def expected_nbytes(dtype: str, shape: tuple[int, ...] | list[int]) -> int:
    if dtype not in DTYPE_SIZES:
        raise WireError(ErrorCode.BAD_REQUEST, f"unsupported tensor dtype {dtype!r}")
    n = DTYPE_SIZES[dtype]
    for d in shape:
        if not isinstance(d, int) or d < 0:
            raise WireError(ErrorCode.BAD_REQUEST, f"bad tensor shape {list(shape)}")
        n *= d
    return n


def error_frame(code: ErrorCode, message: str) -> Frame:
    return Frame("error", {"code": str(code), "message": message})


def encode_frame(frame: Frame) -> list[bytes | bytearray | memoryview]:
    """Frame -> byte chunks to write in order (tensor bytes are not copied)."""
    header = msgpack.packb(
        {"kind": frame.kind, "meta": frame.meta, "tensors": [[t.dtype, list(t.shape)] for t in frame.tensors]},
        use_bin_type=True,
    )
    for t in frame.tensors:
        if len(t.data) != t.nbytes:
            raise ValueError(f"tensor bytes ({len(t.data)}) do not match dtype/shape ({t.nbytes})")
    return [struct.pack(">I", len(header)), header, *[t.data for t in frame.tensors]]


async def write_frame(writer: asyncio.StreamWriter, frame: Frame) -> None:
    await write_frames(writer, [frame])


async def write_frames(writer: asyncio.StreamWriter, frames: list[Frame]) -> None:
    """Frames back to back, in one write (one send, one p2pd message) when they are small:
    per-token frames, and the acks or receipts that ride along with them."""
    chunks = [chunk for frame in frames for chunk in encode_frame(frame)]
    if sum(len(c) for c in chunks) <= 1 << 16:
        writer.write(b"".join(chunks))
    else:
        for chunk in chunks:
            writer.write(chunk)
    await writer.drain()


async def read_frame(reader: asyncio.StreamReader, max_payload: int = DEFAULT_MAX_PAYLOAD_BYTES) -> Frame:
    """Read one frame. Raises asyncio.IncompleteReadError at end of stream, WireError if malformed."""
    (header_len,) = struct.unpack(">I", await reader.readexactly(4))
    if header_len > MAX_HEADER_BYTES:
        raise WireError(ErrorCode.TOO_LARGE, f"frame header of {header_len} bytes exceeds {MAX_HEADER_BYTES}")
    try:
        header = msgpack.unpackb(await reader.readexactly(header_len), raw=False)
        kind, meta, specs = str(header["kind"]), dict(header.get("meta") or {}), list(header.get("tensors") or [])
        shapes = [(str(dtype), tuple(int(d) for d in shape)) for dtype, shape in specs]
    except (ValueError, TypeError, KeyError, msgpack.UnpackException) as exc:
        raise WireError(ErrorCode.BAD_REQUEST, f"malformed frame header: {exc!r}") from exc
    sizes = [expected_nbytes(dtype, shape) for dtype, shape in shapes]
    if sum(sizes) > max_payload:
        raise WireError(
            ErrorCode.TOO_LARGE,
            f"payload of {sum(sizes)} bytes exceeds this peer's limit of {max_payload} bytes; split the batch",
            unread_bytes=sum(sizes),
        )
    body = bytearray(await reader.readexactly(sum(sizes))) if sizes else bytearray()
    view, tensors, offset = memoryview(body), [], 0
    for (dtype, shape), size in zip(shapes, sizes, strict=True):
        tensors.append(WireTensor(dtype, shape, view[offset : offset + size]))
        offset += size
    return Frame(kind, meta, tensors)


async def discard(reader: asyncio.StreamReader, nbytes: int, chunk: int = 1 << 20) -> None:
    """Skip `nbytes` of a stream (so a refusal can be read by a peer still writing)."""
    while nbytes > 0:
        got = await reader.read(min(chunk, nbytes))
        if not got:
            return
        nbytes -= len(got)


def raise_if_error(frame: Frame) -> Frame:
    """Turn an `error` frame into RemoteError; pass anything else through."""
    if frame.kind == "error":
        raise RemoteError(ErrorCode(frame.meta.get("code", "internal")), str(frame.meta.get("message", "")))
    return frame


class RemoteError(Exception):
    """The node answered with an error frame."""

    def __init__(self, code: ErrorCode, message: str):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


def tensor_to_wire(tensor: Any) -> WireTensor:
    """torch.Tensor -> WireTensor (one copy only if the tensor is not contiguous/CPU)."""
    import torch

    t = tensor.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    t = t.contiguous()
    dtype = str(t.dtype).removeprefix("torch.")
    if t.numel() == 0:
        return WireTensor(dtype, tuple(t.shape), b"")
    data = memoryview(t.reshape(-1).view(torch.uint8).numpy())
    return WireTensor(dtype, tuple(t.shape), data)


def wire_digest(wire: WireTensor) -> bytes:
    """Tensor digest (protocol/hashing.py) of a tensor as it went over the wire."""
    return tensor_digest_raw(wire.dtype, tuple(wire.shape), wire.data)


def tensor_from_wire(wire: WireTensor) -> Any:
    """WireTensor -> torch.Tensor sharing the frame's buffer (no copy)."""
    import torch

    dtype = getattr(torch, wire.dtype)
    if wire.nbytes == 0:
        return torch.empty(wire.shape, dtype=dtype)
    return torch.frombuffer(wire.data, dtype=dtype).reshape(wire.shape)


@dataclass
class Openings:
    """A node's answer to a challenge (the `openings` frame), still as bytes."""

    signed_receipt: bytes  # SignedReceipt.to_bytes()
    block: int
    leaf_index: int
    num_leaves: int
    proof: list[bytes]
    inputs: WireTensor  # block input rows for the whole prefix
    outputs: WireTensor  # block output rows of the receipt's step


def open_request(receipt_id: bytes, block: int) -> Frame:
    """The `open` frame challenging block `block` (absolute index) of a receipt."""
    return Frame("open", {"receipt_id": bytes(receipt_id), "block": int(block)})


def parse_openings(frame: Frame) -> Openings:
    """`openings` frame -> Openings; RemoteError for an error frame, WireError if malformed."""
    raise_if_error(frame)
    if frame.kind != "openings" or len(frame.tensors) != 2:
        raise WireError(ErrorCode.BAD_REQUEST, f"expected an openings frame with 2 tensors, got {frame.kind!r}")
    try:
        m = frame.meta
        return Openings(bytes(m["receipt"]), int(m["block"]), int(m["leaf_index"]), int(m["num_leaves"]),
                        [bytes(p) for p in m["proof"]], frame.tensors[0], frame.tensors[1])
    except (KeyError, TypeError, ValueError) as exc:
        raise WireError(ErrorCode.BAD_REQUEST, f"malformed openings: {exc!r}") from exc
