"""The attention-cache budget: a session's reservation is freed on close and after an idle timeout.

Each node here has a budget of exactly one session (batch 1 × MAX_LENGTH tokens); the
client talks to it through its real per-node session calls (client/remote_calls.py).
"""

from __future__ import annotations

import time

import pytest
import torch

from client.remote_calls import NodeFailure, SpanSession, new_session_id
from client.swarm_connection import SwarmConnection
from models.manifest_builder import load_manifest
from protocol.messages import RequestMeta
from tests.swarm.conftest import InProcessNode

MAX_LENGTH = 16
IDLE_TIMEOUT_S = 1.0


@pytest.fixture(scope="module")
def one_session_nodes(dht_peer, make_small_model):
    """(connection, manifest hash, {"patient": ann, "impatient": ann}): two nodes serving 0:2 of the
    same model, each with room for one session; the impatient one closes idle sessions after 1 s."""
    model = make_small_model("llama", seed=6, layers=2)  # own seed = own swarm
    common = [str(model), "--blocks", "0:2", "--initial-peers", *dht_peer, "--max-cache-tokens", str(MAX_LENGTH)]
    nodes = {
        "patient": InProcessNode(common),
        "impatient": InProcessNode([*common, "--session-idle-timeout", str(IDLE_TIMEOUT_S)]),
    }
    conn = SwarmConnection(dht_peer)
    try:
        manifest_hash = load_manifest(model).manifest_hash()
        peer_ids = {name: node.wait().peer_id for name, node in nodes.items()}
        deadline = time.monotonic() + 30
        while True:
            anns = {a.peer_id: a for a in conn.run(conn.announcements(manifest_hash)) if a.online}
            if all(p in anns for p in peer_ids.values()) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        yield conn, manifest_hash, {name: anns[p] for name, p in peer_ids.items()}
    finally:
        conn.close()
        for node in nodes.values():
            node.stop()


def open_session(conn, manifest_hash, ann) -> SpanSession:
    meta = RequestMeta(model=manifest_hash, start=0, end=2, session_id=new_session_id())
    session = SpanSession(conn, ann, meta, batch=1, max_length=MAX_LENGTH)
    conn.run(session.open(10.0))
    return session


def step(conn, session: SpanSession, positions: int = 1) -> torch.Tensor:
    out = conn.run(session.step(torch.randn(1, positions, 64), len(session.history), 30.0)).output
    assert out.shape == (1, positions, 64)
    return out


def accepted_within(conn, manifest_hash, ann, seconds: float) -> SpanSession:
    """A new session that got its first step served (the node frees a closed session's
    reservation as soon as it reads `close`, which may be a moment after we sent it)."""
    deadline = time.monotonic() + seconds
    while True:
        session = open_session(conn, manifest_hash, ann)
        try:
            step(conn, session, 4)
            return session
        except NodeFailure as failure:
            conn.run(session.close())
            if "not enough attention-cache memory" not in str(failure) or time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_closing_a_session_frees_its_cache_for_the_next(one_session_nodes):
    conn, manifest_hash, anns = one_session_nodes
    first = open_session(conn, manifest_hash, anns["patient"])
    step(conn, first, 4)

    second = open_session(conn, manifest_hash, anns["patient"])  # the budget is full: refused politely
    with pytest.raises(NodeFailure, match=r"busy: not enough attention-cache memory .*16/16 reserved.*try another node"):
        step(conn, second)
    conn.run(second.close())

    step(conn, first)  # the refusal did not disturb the open session
    conn.run(first.close())
    third = accepted_within(conn, manifest_hash, anns["patient"], 5.0)
    step(conn, third)
    conn.run(third.close())


def test_idle_session_is_closed_by_the_node_and_its_cache_freed(one_session_nodes):
    conn, manifest_hash, anns = one_session_nodes
    idle = open_session(conn, manifest_hash, anns["impatient"])
    started = time.monotonic()  # before the step: the node's idle clock starts after its reply
    step(conn, idle, 4)

    # the node gives the reservation back once the session has been idle for IDLE_TIMEOUT_S
    fresh = accepted_within(conn, manifest_hash, anns["impatient"], 10 * IDLE_TIMEOUT_S)
    assert time.monotonic() - started >= IDLE_TIMEOUT_S
    conn.run(fresh.close())

    # the node's error frame waits for the client's next step (the node lingers 2 s on the stream)
    with pytest.raises(NodeFailure, match="session closed after being idle too long"):
        step(conn, idle)
    conn.run(idle.close())


@pytest.mark.parametrize("receipts", [False, True], ids=["plain", "receipts"])
def test_a_session_the_node_closed_on_idle_is_reopened_without_banning_it(dht_peer, make_small_model, tmp_path,
                                                                          receipts):
    """A user who pauses longer than a node's idle timeout keeps generating: the client
    re-opens the session on the same node (replaying its prefix) and bans nobody. With
    receipts, the node sends the receipt it still owed before it closes the session, so
    every step's receipt reaches the client and is counter-signed."""
    from client import AutoDistributedModelForCausalLM

    # a swarm of one impatient node, own seed per case: a stopped node's stale announcement
    # on the shared DHT must not be routed to (and banned) by the next case
    model = make_small_model("llama", seed=7 if receipts else 9, layers=2)
    keys = ["--key", str(tmp_path / "node.key"), "--outbox", str(tmp_path / "outbox.sqlite")] if receipts else []
    node = InProcessNode([str(model), "--blocks", "0:2", "--initial-peers", *dht_peer,
                          "--session-idle-timeout", str(IDLE_TIMEOUT_S), *keys])
    client = None
    try:
        node.wait()
        client = AutoDistributedModelForCausalLM.from_pretrained(
            str(model), initial_peers=dht_peer, key=str(tmp_path / "client.key") if receipts else None)
        ids = torch.randint(4, 500, (1, 5), generator=torch.Generator().manual_seed(3))
        kw = {"max_new_tokens": 3, "min_new_tokens": 3, "do_sample": False}
        with client.inference_session(max_length=16):
            first = client.generate(ids, **kw)
            time.sleep(3 * IDLE_TIMEOUT_S + 2.5)  # past the timeout and the 2 s the node lingers
            paused = client.generate(first[:, -1:], **kw)  # the session holds the rest
        with client.inference_session(max_length=16):
            unpaused = client.generate(client.generate(ids, **kw)[:, -1:], **kw)
        assert paused.tolist() == unpaused.tolist()
        assert client.swarm.router.banned_until == {}
        if receipts:
            book = client.swarm.receipts.receipts
            assert all(r.verify_client() for r in book)
            by_session: dict[bytes, list[int]] = {}
            for r in book:
                by_session.setdefault(r.receipt.session_id, []).append(r.receipt.step)
            # first session: steps 0-2, the pause (step 2's receipt still owed), then step 3
            # re-opened: the prefix replayed as step 3, step 3 itself, 4, 5; second: 0-5
            assert sorted(by_session.values()) == [[0, 1, 2, 3, 3, 4, 5], [0, 1, 2, 3, 4, 5]], by_session
    finally:
        if client is not None:
            client.close()
        node.stop()


def test_a_receipt_still_owed_when_the_node_closes_on_idle_is_not_held_against_it(dht_peer, make_small_model,
                                                                                   tmp_path):
    """Forward calls inside a session (no generate() to collect receipts at its end) leave the
    last step's receipt owed; a pause past the node's idle timeout loses it with the stream.
    The client re-opens the session on the same node, bans nobody, and keeps the logits exact."""
    from client import AutoDistributedModelForCausalLM

    model = make_small_model("llama", seed=8, layers=2)  # own seed = own swarm (see above)
    node = InProcessNode([str(model), "--blocks", "0:2", "--initial-peers", *dht_peer,
                          "--session-idle-timeout", str(IDLE_TIMEOUT_S),
                          "--key", str(tmp_path / "node.key"), "--outbox", str(tmp_path / "outbox.sqlite")])
    client = None
    try:
        node.wait()
        client = AutoDistributedModelForCausalLM.from_pretrained(str(model), initial_peers=dht_peer,
                                                                 key=str(tmp_path / "client.key"))
        ids = torch.randint(4, 500, (1, 6), generator=torch.Generator().manual_seed(5))
        with torch.no_grad():
            with client.inference_session(max_length=16) as session:
                client(ids[:, :4])
                assert [len(span.owed) for span in session.spans] == [1]
                time.sleep(3 * IDLE_TIMEOUT_S + 2.5)  # past the timeout and the 2 s the node lingers
                paused = client(ids).logits[:, -2:]
            unpaused = client(ids).logits[:, -2:]  # no session: one plain forward
        torch.testing.assert_close(paused, unpaused, rtol=1e-4, atol=1e-4)
        assert client.swarm.router.banned_until == {}
        steps = sorted(r.receipt.step for r in client.swarm.receipts.receipts if r.receipt.kind.name == "INFERENCE")
        assert steps == [1, 1]  # step 0's receipt went with the stream; the replay and step 1 are kept
    finally:
        if client is not None:
            client.close()
        node.stop()
