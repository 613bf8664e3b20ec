"""Every kind of bad request gets a clear error frame, and the node keeps serving afterwards."""

from __future__ import annotations

import struct

import pytest
import torch

from client.swarm_connection import SwarmConnection
from models.manifest_builder import load_manifest
from protocol.messages import (
    ErrorCode,
    Frame,
    RequestMeta,
    read_frame,
    tensor_to_wire,
    write_frame,
)


@pytest.fixture(scope="module")
def node_a(llama_swarm):
    """(connection, announcement of node A = blocks 0:2 with small limits, manifest hash)."""
    conn = SwarmConnection(llama_swarm.peers)
    manifest_hash = load_manifest(llama_swarm.model).manifest_hash()
    anns = [a for a in conn.run(conn.announcements(manifest_hash)) if a.peer_id == llama_swarm.nodes[0].peer_id]
    assert anns, "node A is not announced"
    yield conn, anns[0], manifest_hash
    conn.close()


def ask(conn, ann, rpc: str, frame: Frame) -> Frame:
    return conn.run(conn.call(ann, rpc, frame), timeout=60)


def good_forward(conn, ann, manifest_hash) -> Frame:
    meta = RequestMeta(manifest_hash, 0, 2).to_meta()
    return ask(conn, ann, "forward", Frame("forward", meta, [tensor_to_wire(torch.randn(1, 3, 64))]))


def session_exchange(conn, ann, frames: list[Frame], replies: int) -> list[Frame]:
    async def run() -> list[Frame]:
        reader, writer = await conn.open_stream(ann, "inference")
        try:
            for frame in frames:
                await write_frame(writer, frame)
            return [await read_frame(reader) for _ in range(replies)]
        finally:
            writer.close()

    return conn.run(run(), timeout=60)


def assert_error(frame: Frame, code: ErrorCode, text: str) -> None:
    assert frame.kind == "error", frame
    assert frame.meta["code"] == code
    assert text in frame.meta["message"]


HIDDEN = 64


@pytest.mark.parametrize(("name", "meta_change", "tensors", "code", "text"), [
    ("unknown model", {"model": b"\x01" * 32}, [torch.randn(1, 2, HIDDEN)], ErrorCode.UNKNOWN_MODEL, "serves model"),
    ("wrong blocks", {"end": 3}, [torch.randn(1, 2, HIDDEN)], ErrorCode.WRONG_BLOCKS, "serves blocks 0:2"),
    ("wrong hidden size", {}, [torch.randn(1, 2, 32)], ErrorCode.BAD_REQUEST, "shape [batch, seq, 64]"),
    ("wrong rank", {}, [torch.randn(2, HIDDEN)], ErrorCode.BAD_REQUEST, "shape [batch, seq, 64]"),
    ("integer hidden states", {}, [torch.ones(1, 2, HIDDEN, dtype=torch.int64)], ErrorCode.BAD_REQUEST, "must be one of"),
    ("two tensors", {}, [torch.randn(1, 2, HIDDEN)] * 2, ErrorCode.BAD_REQUEST, "takes 1 tensor"),
    ("oversize payload", {}, [torch.randn(1, 4200, HIDDEN)], ErrorCode.TOO_LARGE, "exceeds this peer's limit"),
])
def test_bad_forward_gets_clear_error_and_node_still_serves(node_a, name, meta_change, tensors, code, text):
    conn, ann, manifest_hash = node_a
    meta = {**RequestMeta(manifest_hash, 0, 2).to_meta(), **meta_change}
    reply = ask(conn, ann, "forward", Frame("forward", meta, [tensor_to_wire(t) for t in tensors]))
    assert_error(reply, code, text)
    ok = good_forward(conn, ann, manifest_hash)
    assert ok.kind == "result" and ok.tensors[0].shape == (1, 3, HIDDEN)


def test_malformed_frame_gets_clear_error(node_a):
    conn, ann, manifest_hash = node_a

    async def send_garbage() -> Frame:
        reader, writer = await conn.open_stream(ann, "forward")
        writer.write(struct.pack(">I", 5) + b"\xc1\xc1\xc1\xc1\xc1")
        await writer.drain()
        try:
            return await read_frame(reader)
        finally:
            writer.close()

    assert_error(conn.run(send_garbage(), timeout=60), ErrorCode.BAD_REQUEST, "malformed frame header")
    assert good_forward(conn, ann, manifest_hash).kind == "result"


def test_backward_with_mismatched_gradient_is_refused(node_a):
    conn, ann, manifest_hash = node_a
    meta = RequestMeta(manifest_hash, 0, 2).to_meta()
    frame = Frame("backward", meta, [tensor_to_wire(torch.randn(1, 3, HIDDEN)), tensor_to_wire(torch.randn(1, 2, HIDDEN))])
    assert_error(ask(conn, ann, "backward", frame), ErrorCode.BAD_REQUEST, "output gradient shape")
    assert good_forward(conn, ann, manifest_hash).kind == "result"


def open_frame(manifest_hash: bytes, batch: int, max_length: int) -> Frame:
    return Frame("open_session", {**RequestMeta(manifest_hash, 0, 2).to_meta(), "batch": batch,
                                  "max_length": max_length})


def step_frame(positions: int, batch: int = 1) -> Frame:
    return Frame("step", {"step": 0}, [tensor_to_wire(torch.randn(batch, positions, HIDDEN))])


def test_session_longer_than_node_allows_is_refused(node_a):
    conn, ann, manifest_hash = node_a
    (reply,) = session_exchange(conn, ann, [open_frame(manifest_hash, 1, 500), step_frame(1)], 1)
    assert_error(reply, ErrorCode.TOO_LONG, "exceeds this node's limit of 128")


def test_session_beyond_cache_budget_is_refused_politely(node_a):
    conn, ann, manifest_hash = node_a
    (reply,) = session_exchange(conn, ann, [open_frame(manifest_hash, 16, 128), step_frame(1, 16)], 1)
    assert_error(reply, ErrorCode.BUSY, "not enough attention-cache memory")


def test_step_past_max_length_is_refused_and_session_continues(node_a):
    conn, ann, manifest_hash = node_a
    frames = [open_frame(manifest_hash, 1, 4), step_frame(3), step_frame(2), step_frame(1), Frame("close")]
    first, too_long, last = session_exchange(conn, ann, frames, 3)
    assert first.kind == "result" and first.tensors[0].shape == (1, 3, HIDDEN)
    assert_error(too_long, ErrorCode.TOO_LONG, "3 positions used, 2 more requested")
    assert last.kind == "result" and last.tensors[0].shape == (1, 1, HIDDEN)
    assert good_forward(conn, ann, manifest_hash).kind == "result"
