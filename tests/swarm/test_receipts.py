"""Receipts: every step signed by the node, verified, chained and counter-signed by the client,
kept in the node's outbox, and open to challenges whose openings match the commitments."""

from __future__ import annotations

import time

import pytest
import torch

import node.cli as node_cli
from client.remote_calls import NodeFailure
from models.span import BlockSpan
from node.receipt_outbox import ReceiptOutbox
from protocol.hashing import tensor_digest_raw
from protocol.merkle import block_root, verify_block_proof
from protocol.messages import (
    ErrorCode,
    Frame,
    open_request,
    parse_openings,
    read_frame,
    tensor_from_wire,
    tensor_to_wire,
    write_frame,
)
from protocol.receipts import Kind, SignedReceipt
from protocol.tensor_hash import tensor_digest
from tests.swarm.conftest import InProcessNode


@pytest.fixture(scope="module")
def receipt_swarm(dht_peer, make_small_model, tmp_path_factory):
    """Two in-process nodes with identities (blocks 0:2 and 2:4) and a client with one."""
    from client import AutoDistributedModelForCausalLM

    keys = tmp_path_factory.mktemp("keys")
    model = make_small_model("llama", seed=4)
    nodes = [InProcessNode([str(model), "--blocks", span, "--initial-peers", *dht_peer, "--key",
                            str(keys / f"node{i}.key")]) for i, span in enumerate(["0:2", "2:4"])]
    for n in nodes:
        n.wait()
    client = AutoDistributedModelForCausalLM.from_pretrained(str(model), initial_peers=dht_peer,
                                                             key=str(keys / "client.key"))
    yield model, nodes, client, keys
    client.close()
    for n in nodes:
        n.stop()


def test_every_generate_step_has_verified_chained_countersigned_receipts(receipt_swarm):
    model, nodes, client, keys = receipt_swarm
    book = client.swarm.receipts
    book.receipts.clear()
    ids = torch.randint(4, 500, (1, 5), generator=torch.Generator().manual_seed(0))
    client.generate(ids, max_new_tokens=6, min_new_tokens=6, do_sample=False)
    receipts = [r for r in book.receipts if r.receipt.kind == Kind.INFERENCE]
    assert len(receipts) == 6 * 2  # 6 steps (prompt + 5 new tokens fed back) x 2 nodes
    assert all(r.verify_node() and r.verify_client() for r in receipts)
    by_step: dict[int, list[SignedReceipt]] = {}
    for r in receipts:
        by_step.setdefault(r.receipt.step, []).append(r)
    assert sorted(by_step) == list(range(6))
    for step, (first, second) in by_step.items():
        assert (first.receipt.block_start, second.receipt.block_start) == (0, 2)
        assert first.receipt.output_hash == second.receipt.input_hash
        assert first.receipt.session_id == second.receipt.session_id
        assert first.receipt.tokens == (5 if step == 0 else 1)
    assert {r.receipt.node_key.hex() for r in receipts} == {n.ready["node_key"] for n in nodes}


def test_node_outbox_holds_receipts_with_client_signatures(receipt_swarm):
    model, nodes, client, keys = receipt_swarm
    client.generate(torch.tensor([[5, 6, 7]]), max_new_tokens=3, do_sample=False)
    mine = {r.id for r in client.swarm.receipts.receipts}
    deadline = time.monotonic() + 10
    while True:
        with ReceiptOutbox(keys / "node1.receipts.sqlite", read_only=True) as outbox:
            acked = [e for e in outbox.list(1000) if e.id in mine and e.receipt.client_signature is not None]
        if acked or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert acked and all(e.receipt.verify_client() for e in acked)


def test_forward_and_backward_calls_have_receipts(receipt_swarm):
    model, nodes, client, keys = receipt_swarm
    book = client.swarm.receipts
    book.receipts.clear()
    emb = client.get_input_embeddings()(torch.tensor([[3, 4, 5, 6]])).detach().requires_grad_(True)
    client(inputs_embeds=emb).logits.sum().backward()
    kinds = [(r.receipt.kind, r.receipt.block_start) for r in book.receipts]
    assert kinds == [(Kind.FORWARD, 0), (Kind.FORWARD, 2), (Kind.BACKWARD, 2), (Kind.BACKWARD, 0)]
    fwd0, fwd1, bwd1, bwd0 = book.receipts
    assert fwd0.receipt.output_hash == fwd1.receipt.input_hash
    assert bwd1.receipt.output_hash == bwd0.receipt.input_hash
    assert fwd1.receipt.blocks_root == bwd1.receipt.blocks_root  # both commit to the same forward


def open_receipt(client, ann, receipt_id: bytes, block: int) -> Frame:
    conn = client.swarm.conn

    async def ask() -> Frame:
        reader, writer = await conn.open_stream(ann, "open")
        try:
            await write_frame(writer, open_request(receipt_id, block))
            return await read_frame(reader)
        finally:
            writer.close()

    return conn.run(ask(), timeout=30)


def test_challenge_openings_hash_to_commitments_and_recompute(receipt_swarm):
    model, nodes, client, keys = receipt_swarm
    book = client.swarm.receipts
    book.receipts.clear()
    client.generate(torch.tensor([[9, 10, 11, 12]]), max_new_tokens=4, min_new_tokens=4, do_sample=False)
    target = next(r for r in book.receipts if r.receipt.block_start == 2 and r.receipt.step == 2)
    ann = next(a for a in client.swarm.router.announcements if a.start == 2)
    span = BlockSpan.load(model, 2, 4)
    for block in (2, 3):
        openings = parse_openings(open_receipt(client, ann, target.id, block))
        assert SignedReceipt.from_bytes(openings.signed_receipt).id == target.id
        inputs, outputs = tensor_from_wire(openings.inputs), tensor_from_wire(openings.outputs)
        assert inputs.shape == (1, 4 + 2, 64) and outputs.shape == (1, 1, 64)  # prefix 0..5, step rows
        leaf = tensor_digest(outputs)
        assert verify_block_proof(leaf, openings.leaf_index, openings.num_leaves, openings.proof,
                                  target.receipt.blocks_root)
        meta = open_receipt(client, ann, target.id, block).meta
        leaves = [bytes(x) for x in meta["leaves"]]
        assert block_root(leaves) == target.receipt.blocks_root and leaves[block - 2] == leaf
        if block > 2:  # an inner block's input is the previous block's committed output
            assert tensor_digest(inputs[:, -1:].contiguous()) == leaves[block - 3]
            assert verify_block_proof(leaves[block - 3], block - 3, 2, [bytes(x) for x in meta["input_proof"]],
                                      target.receipt.blocks_root)
        else:
            assert "input_proof" not in meta
        if block == 2:
            last = openings.inputs
            step_rows = inputs[:, -1:].contiguous()
            assert tensor_digest_raw(last.dtype, tuple(step_rows.shape), step_rows.numpy().tobytes()) == \
                target.receipt.input_hash
        recomputed = span.block_forward(block, inputs.clone())[:, -1:]
        torch.testing.assert_close(recomputed, outputs, atol=1e-5, rtol=1e-5)

    missing = open_receipt(client, ann, b"\x07" * 32, 2)
    assert missing.kind == "error" and missing.meta["code"] == ErrorCode.NOT_FOUND


def node_with_signer(model, dht_peer, key, monkeypatch, sign_step_for):
    """An in-process node serving 2:4 whose `sign_step` is `sign_step_for(honest_sign_step)`."""
    real_make = node_cli.make_receipts

    def make_receipts(cfg, span, manifest_hash):
        signer = real_make(cfg, span, manifest_hash)
        signer.sign_step = sign_step_for(signer.sign_step)
        return signer

    monkeypatch.setattr(node_cli, "make_receipts", make_receipts)
    try:
        return InProcessNode([str(model), "--blocks", "2:4", "--initial-peers", *dht_peer, "--key", str(key)]).wait()
    finally:
        monkeypatch.setattr(node_cli, "make_receipts", real_make)


@pytest.fixture(params=[1, 4], ids=["receipt_batch=1", "receipt_batch=4"])
def receipt_batch(request, receipt_swarm):
    """The client lets nodes send inference receipts this many at a time (then back to its default)."""
    client = receipt_swarm[2]
    default, client.swarm.receipt_batch = client.swarm.receipt_batch, request.param
    yield request.param
    client.swarm.receipt_batch = default


def dropped_before(bad_step: int, batch: int) -> int:
    """The first step a node no longer serves when its receipt for `bad_step` is bad: that
    receipt comes, with the rest of its batch, in front of the node's answer to the next
    multiple of `batch`; it is checked once the client has sent its next request, and the node
    is dropped before its next step."""
    return (bad_step // batch + 1) * batch + 1


def local_greedy(model, ids: torch.Tensor, tokens: int) -> torch.Tensor:
    """What transformers generates greedily on the same model, run locally."""
    from transformers import AutoModelForCausalLM

    ref = AutoModelForCausalLM.from_pretrained(model).eval()
    return ref.generate(ids, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False)


def forget(client, honest_peer: str, node) -> None:
    """Undo a test's routing bias and ban, and stop its extra node, so later tests route as before."""
    client.swarm.router.rtt.pop(honest_peer, None)
    client.swarm.router.banned_until.pop(node.ready["peer_id"], None)
    node.stop()


def test_node_with_invalid_receipts_is_banned_and_routed_around(receipt_swarm, receipt_batch, dht_peer, monkeypatch):
    """A third node serving 2:4 signs receipts for outputs it did not send: the client drops it
    once its first receipts are in, and the rest of the generation goes through the honest node."""
    model, nodes, client, keys = receipt_swarm
    def lying(honest):
        def sign_step(state, frame, hidden, out, per_block, step, *rest):
            return honest(state, frame, hidden, out + 1.0, per_block, step, *rest)  # commits to other output

        return sign_step

    liar = node_with_signer(model, dht_peer, keys / "liar.key", monkeypatch, lying)
    try:
        honest_peer = next(n.peer_id for n in nodes if n.ready["blocks"] == [2, 4])
        client.swarm.router.rtt[honest_peer] = 10.0  # make the liar look faster, so it is tried first
        client.swarm.router.fetched_at = -1e9
        ids = torch.tensor([[20, 21, 22]])
        with client.inference_session(max_length=16) as session:
            out = client.generate(ids, max_new_tokens=8, min_new_tokens=8, do_sample=False)
            assert session.spans[-1].ann.peer_id == honest_peer
        assert client.swarm.router.banned_until.get(liar.peer_id)
        assert out.tolist() == local_greedy(model, ids, 8).tolist()
    finally:
        forget(client, honest_peer, liar)


@pytest.mark.parametrize("bad_step", [1, 3, 6])
def test_a_receipt_that_fails_background_verification_gets_the_node_dropped(receipt_swarm, receipt_batch, dht_peer,
                                                                             monkeypatch, caplog, bad_step):
    """Receipts are checked while the next hops compute: a node that lies once (here at step
    `bad_step` of steps 0..7) is dropped when its lie is in and checked (`dropped_before`), or
    when the session closes. The output is still exact, the lie is not kept as evidence, its
    honest receipts are, including those of the steps it answered before it was dropped."""
    model, nodes, client, keys = receipt_swarm
    def lying_once(honest):
        def sign_step(state, frame, hidden, out, per_block, step, *rest):
            return honest(state, frame, hidden, out + 1.0 if step == bad_step else out, per_block, step, *rest)

        return sign_step

    liar = node_with_signer(model, dht_peer, keys / f"liar-once-{bad_step}.key", monkeypatch, lying_once)
    book = client.swarm.receipts
    book.receipts.clear()
    try:
        honest_peer = next(n.peer_id for n in nodes if n.ready["blocks"] == [2, 4])
        client.swarm.router.rtt[honest_peer] = 10.0  # make the liar look faster, so it is tried first
        client.swarm.router.fetched_at = -1e9
        ids = torch.tensor([[30, 31, 32]])
        with caplog.at_level("WARNING", logger="corolla.client"):
            with client.inference_session(max_length=16) as session:
                out = client.generate(ids, max_new_tokens=8, min_new_tokens=8, do_sample=False)
                last = session.spans[-1].ann.peer_id
            # checked by the time the session is closed: nothing left unverified
            assert client.swarm.router.banned_until.get(liar.ready["peer_id"])
        dropped = dropped_before(bad_step, receipt_batch)
        assert last == (honest_peer if dropped <= 7 else liar.ready["peer_id"])
        assert any("invalid receipt" in r.getMessage() and "output hash" in r.getMessage() for r in caplog.records)
        kept = [(r.receipt.node_key.hex(), r.receipt.step) for r in book.receipts if r.receipt.block_start == 2]
        assert (liar.ready["node_key"], bad_step) not in kept
        served = range(min(dropped, 8))
        assert [step for key, step in kept if key == liar.ready["node_key"]] == [s for s in served if s != bad_step]
        assert all(r.verify_client() for r in book.receipts)
        assert out.tolist() == local_greedy(model, ids, 8).tolist()
    finally:
        forget(client, honest_peer, liar)


def serving(client, start: int):
    """The announcement of the node whose span starts at `start`, freshly read from the DHT."""
    client.swarm.conn.run(client.swarm.router.refresh(), timeout=30)
    return next(a for a in client.swarm.router.announcements if a.start == start and a.online)


def run_steps_raw(client, ann, with_next: bool, steps: int = 1, opening_extra: dict | None = None,
                  finish: bool = True, session_id: bytes = bytes(range(16))) -> list[Frame]:
    """`steps` steps of a fresh inference session on `ann`, then (with `with_next` and
    `finish`) `finish`: every frame the node sent, in order."""
    conn = client.swarm.conn
    meta = client.swarm.meta(ann, session_id, 0)

    async def ask() -> list[Frame]:
        reader, writer = await conn.open_stream(ann, "inference")
        frames: list[Frame] = []

        async def until(kind: str) -> None:
            frames.append(await read_frame(reader))
            while frames[-1].kind not in (kind, "error"):
                frames.append(await read_frame(reader))

        try:
            opening = {**meta.to_meta(), "batch": 1, "max_length": 8, **(opening_extra or {})}
            if with_next:
                opening["receipt_with_next"] = True
            await write_frame(writer, Frame("open_session", opening))
            for step in range(steps):
                await write_frame(writer, Frame("step", {"step": step}, [tensor_to_wire(torch.randn(1, 1, 64))]))
                await until("result")
                if frames[-1].kind == "error":
                    return frames
            if with_next and finish:
                await write_frame(writer, Frame("finish"))
                await until("finished")
            await write_frame(writer, Frame("close"))
            return frames
        finally:
            writer.close()

    return conn.run(ask(), timeout=30)


def test_a_step_receipt_rides_in_front_of_the_next_answer_when_the_client_asks(receipt_swarm):
    """receipt_with_next: each result leaves before the node hashes and signs; its receipt
    comes in front of the node's next answer (the next result, or `finished`) and commits to
    exactly that output. Without it, one frame carries both."""
    model, nodes, client, keys = receipt_swarm
    ann = serving(client, 0)
    frames = run_steps_raw(client, ann, with_next=True, steps=2)
    assert [f.kind for f in frames] == ["result", "receipt", "result", "receipt", "finished"]
    results, receipts = frames[0:3:2], frames[1:4:2]
    for step, (result, receipt) in enumerate(zip(results, receipts, strict=True)):
        assert result.meta["receipt_follows"] is True and not result.meta["receipt"]
        signed = SignedReceipt.from_bytes(bytes(receipt.meta["receipt"]))
        assert signed.verify_node() and signed.receipt.kind == Kind.INFERENCE and signed.receipt.step == step
        assert signed.receipt.output_hash == tensor_digest(tensor_from_wire(result.tensors[0]))
    (single,) = run_steps_raw(client, ann, with_next=False)
    assert single.meta["receipt_follows"] is False
    assert SignedReceipt.from_bytes(bytes(single.meta["receipt"])).verify_node()


def test_with_receipt_batch_the_node_sends_its_receipts_together(receipt_swarm):
    """receipt_batch 3: the node holds three steps' receipts, then sends them in step order in
    front of its next answer; `finish` brings the rest. Each commits to its own result."""
    model, nodes, client, keys = receipt_swarm
    ann = serving(client, 0)
    frames = run_steps_raw(client, ann, with_next=True, steps=4, opening_extra={"receipt_batch": 3})
    assert [f.kind for f in frames] == ["result"] * 3 + ["receipt"] * 3 + ["result", "receipt", "finished"]
    results = [f for f in frames if f.kind == "result"]
    receipts = [SignedReceipt.from_bytes(bytes(f.meta["receipt"])) for f in frames if f.kind == "receipt"]
    assert [r.receipt.step for r in receipts] == [0, 1, 2, 3]
    for result, signed in zip(results, receipts, strict=True):
        assert signed.verify_node()
        assert signed.receipt.output_hash == tensor_digest(tensor_from_wire(result.tensors[0]))


def test_receipts_held_when_the_client_closes_without_finish_are_still_stored(receipt_swarm):
    """The steps a node answered are its evidence even if the client closes before collecting
    their receipts: the node signs and stores them when the session ends."""
    model, nodes, client, keys = receipt_swarm
    ann = serving(client, 0)
    session_id = b"closed-unfinish\x01"
    frames = run_steps_raw(client, ann, with_next=True, steps=2, opening_extra={"receipt_batch": 4}, finish=False,
                           session_id=session_id)
    assert [f.kind for f in frames] == ["result", "result"]
    deadline = time.monotonic() + 10
    while True:
        with ReceiptOutbox(keys / "node0.receipts.sqlite", read_only=True) as outbox:
            steps = sorted(e.receipt.receipt.step for e in outbox.list(10_000)
                           if e.receipt.receipt.session_id == session_id)
        if len(steps) >= 2 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert steps == [0, 1]


@pytest.mark.parametrize("value", [0, -1, "4", 2.5, True])
def test_a_bad_receipt_batch_is_refused_with_a_clear_error(receipt_swarm, value):
    model, nodes, client, keys = receipt_swarm
    ann = serving(client, 0)
    (error,) = run_steps_raw(client, ann, with_next=True, opening_extra={"receipt_batch": value})
    assert error.kind == "error" and error.meta["code"] == ErrorCode.BAD_REQUEST
    assert "receipt_batch must be a positive integer" in error.meta["message"]
    from client import AutoDistributedModelForCausalLM

    with pytest.raises(ValueError, match="receipt_batch must be an integer from 1 to 16"):
        AutoDistributedModelForCausalLM.from_pretrained(str(model), initial_peers=[], receipt_batch=value)


def test_a_node_that_holds_back_more_receipts_than_allowed_is_dropped(receipt_swarm, monkeypatch, caplog):
    """Nodes that hold back 3 receipts when the client allows 1 are treated as faulty: the
    client bans them with a clear reason instead of waiting for evidence that is late."""
    import node.block_server as block_server

    model, nodes, client, keys = receipt_swarm
    monkeypatch.setattr(block_server, "receipt_batch", lambda meta: 3)  # every in-process node ignores the client
    default, client.swarm.receipt_batch = client.swarm.receipt_batch, 1
    try:
        with caplog.at_level("WARNING", logger="corolla.client"), pytest.raises(NodeFailure):
            client.generate(torch.tensor([[50, 51, 52]]), max_new_tokens=4, min_new_tokens=4, do_sample=False)
        messages = [r.getMessage() for r in caplog.records]
        assert any("holds back 2 receipts (at most 1 allowed)" in m for m in messages), messages
        assert any("banned node" in m and "withholds receipts: 2 results without one" in m for m in messages)
    finally:
        client.swarm.receipt_batch = default
        for n in nodes:
            client.swarm.router.banned_until.pop(n.peer_id, None)


def test_a_node_that_sends_no_receipt_after_its_result_is_dropped(receipt_swarm, receipt_batch, dht_peer, monkeypatch,
                                                                  caplog):
    """A node that answers step 1 but fails to deliver its receipt (here: signing breaks
    after the result went out) is dropped like one with an invalid receipt; the tokens are
    still exact, since the output itself was right."""
    model, nodes, client, keys = receipt_swarm
    def no_receipt_at_step_1(honest):
        def sign_step(state, frame, hidden, out, per_block, step, *rest):
            if step == 1:
                raise RuntimeError("signer broke")
            return honest(state, frame, hidden, out, per_block, step, *rest)

        return sign_step

    mute = node_with_signer(model, dht_peer, keys / "mute.key", monkeypatch, no_receipt_at_step_1)
    try:
        honest_peer = next(n.peer_id for n in nodes if n.ready["blocks"] == [2, 4])
        client.swarm.router.rtt[honest_peer] = 10.0  # make the mute node look faster, so it is tried first
        client.swarm.router.fetched_at = -1e9
        ids = torch.tensor([[40, 41, 42]])
        with caplog.at_level("INFO", logger="corolla.client"):
            with client.inference_session(max_length=16) as session:
                out = client.generate(ids, max_new_tokens=8, min_new_tokens=8, do_sample=False)
                assert session.spans[-1].ann.peer_id == honest_peer
        assert client.swarm.router.banned_until.get(mute.ready["peer_id"])
        assert any("sent no receipt for a result" in r.getMessage() for r in caplog.records)
        assert out.tolist() == local_greedy(model, ids, 8).tolist()
    finally:
        forget(client, honest_peer, mute)


def test_receipt_book_rejects_output_it_did_not_receive(receipt_swarm):
    model, nodes, client, keys = receipt_swarm
    book = client.swarm.receipts
    conn = client.swarm.conn
    from client.remote_calls import call_span

    ann = serving(client, 0)
    meta = client.swarm.meta(ann, b"\x01" * 16, 0, request_ref=b"\x02" * 32)
    result = conn.run(call_span(conn, ann, "forward", meta, [torch.randn(1, 2, 64)], 30))
    book.verify(ann, meta, Kind.FORWARD, 0, meta.request_ref, result, None)  # honest: accepted
    tampered = torch.zeros(1, 2, 64)
    from protocol.messages import tensor_to_wire

    result.received = tensor_to_wire(tampered)
    with pytest.raises(NodeFailure, match="output hash does not match"):
        book.verify(ann, meta, Kind.FORWARD, 0, meta.request_ref, result, None)
