"""Decode sessions are checked once over, at one secret block per session, prefix extended.

A real ledger process and real hivemind peers answering `open` (as in
test_verifier_service.py), a 4-block span so the block choice matters: the sampled steps
of a session share one block and reuse the prefix keys/values; a session still receiving
receipts is left alone; a restart in the middle of a session neither repeats nor skips a
check nor moves its block; a node cheating on one block late in its sessions is caught in
the sessions that draw that block; a node that learned its session's block from a
challenge gains nothing on the session's later steps.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from protocol.identity import Identity
from protocol.receipts import Kind, Receipt, SignedReceipt
from protocol.verdicts import Reason, Result
from tests.adversaries.openings_peer import Bootstrap, OpeningsPeer, PeerLoop
from tests.adversaries.work import Client, HonestNode
from tests.ledger.harness import LedgerProcess
from verifier.challenger import Challenger
from verifier.ledger_client import LedgerClient
from verifier.openings import Openings
from verifier.sampling import block_of_session, challenged_block, session_block
from verifier.service import ServiceConfig, Verifier
from verifier.state import VerifierState

HIDDEN, PROMPT = 64, 4


class LateBlockCheater(HonestNode):
    """Honest for the first `honest_steps` steps of a session, then returns noise from the
    blocks `cheats(session)` names (the rest computed honestly on what it committed), so
    every opening is consistent and only a cheated block's recomputation can tell."""

    name = "late_block"

    def __init__(self, *args: object, honest_steps: int = 2, cheat_block: int = 2, **kw: object):
        super().__init__(*args, **kw)  # type: ignore[arg-type]
        self.honest_steps, self.cheat_block = honest_steps, cheat_block

    def cheats(self, session_id: bytes) -> set[int]:
        return {self.cheat_block}

    def _step_cached(self, session_id: bytes, hidden: torch.Tensor) -> list[torch.Tensor]:
        history = self.sessions[session_id]
        if len(history[0]) < self.honest_steps:
            return super()._step_cached(session_id, hidden)
        cheat, outs, x = self.cheats(session_id), [], hidden
        for k, index in enumerate(range(self.start, self.end)):
            y = self.span.block_forward(index, torch.cat([*history[k], x], dim=1))[:, -x.shape[1] :]
            if index in cheat:
                y = torch.randn_like(y) * y.std()
            outs.append(y.contiguous())
            x = y
        return outs


class BlockLearner(LateBlockCheater):
    """Remembers the block of each session's first challenge and from then on cheats on
    every other block of that session: what a node would do if the session block held for
    the session's later receipts."""

    name = "block_learner"

    def __init__(self, *args: object, **kw: object):
        super().__init__(*args, honest_steps=0, **kw)  # type: ignore[arg-type]
        self.learned: dict[bytes, int] = {}

    def open(self, receipt_id: bytes, block: int) -> Openings:
        self.learned.setdefault(self.work[receipt_id].signed.receipt.session_id, block)
        return super().open(receipt_id, block)

    def cheats(self, session_id: bytes) -> set[int]:
        if session_id not in self.learned:
            return set()
        return set(range(self.start, self.end)) - {self.learned[session_id]}


class Swarm:
    def __init__(self, model_dir: Path, tmp: Path, loop: PeerLoop, boot: Bootstrap):
        from models.manifest_builder import load_manifest

        self.model_dir, self.loop, self.boot = model_dir, loop, boot
        self.ledger = LedgerProcess(f"sqlite:///{tmp / 'ledger.db'}", tmp, args=["--grace-s", "3600"]).start()
        self.peers: list[OpeningsPeer] = []
        self.client = Client()
        poster = self.ledger.client(Identity.generate())
        assert poster.post("/v1/manifests", load_manifest(model_dir).to_json()).status_code == 200
        poster.close()

    def serve(self, node: HonestNode) -> OpeningsPeer:
        peer = OpeningsPeer(self.loop, self.boot.maddrs, node)
        self.peers.append(peer)
        return peer

    def session(
        self, node: HonestNode, steps: range, session_id: bytes | None = None
    ) -> tuple[bytes, list[SignedReceipt]]:
        """Decode steps `steps` of one session (step 0: a prompt), acknowledged by the client."""
        session_id = session_id or os.urandom(16)
        out = []
        for step in steps:
            x = torch.randn(1, PROMPT if step == 0 else 1, HIDDEN) * 0.02
            d = node.call(self.client.identity, x, kind=Kind.INFERENCE, session_id=session_id, step=step)
            out.append(self.client.receive(d))
        return session_id, out

    def honest_session(self, steps: range) -> tuple[HonestNode, OpeningsPeer, bytes, list[SignedReceipt]]:
        """An honest node on blocks 0:4, serving openings, whose session's receipts are posted."""
        node = HonestNode(self.model_dir, 0, 4)
        peer = self.serve(node)
        session_id, receipts = self.session(node, steps)
        self.post(receipts)
        return node, peer, session_id, receipts

    def post(self, receipts: list[SignedReceipt]) -> None:
        poster = self.ledger.client(Identity.generate())
        resp = poster.post("/v1/receipts", {"receipts": [r.to_json() for r in receipts]})
        poster.close()
        assert resp.status_code == 200 and len(resp.json()["accepted"]) == len(receipts), resp.text

    def verifier(self, state: Path, **kw: object) -> Verifier:
        config = ServiceConfig(
            ledger=self.ledger.url,
            model=str(self.model_dir),
            key_file="",
            sample_rate=1.0,
            challenge_timeout_s=5.0,
            **kw,  # type: ignore[arg-type]
        )
        return Verifier(
            config,
            self.ledger.verifier,
            LedgerClient(self.ledger.url, self.ledger.verifier),
            Challenger(self.boot.maddrs, timeout_s=config.challenge_timeout_s),
            VerifierState(state),
        )

    def verdicts(self, receipt: SignedReceipt) -> list[dict]:
        client = LedgerClient(self.ledger.url)
        try:
            return list(client._get("/v1/verdicts", receipt=receipt.id.hex()))
        finally:
            client.close()

    def close(self) -> None:
        for p in self.peers:
            p.close()
        self.ledger.stop()


@pytest.fixture(scope="module")
def peers() -> Iterator[tuple[PeerLoop, Bootstrap]]:
    loop = PeerLoop()
    boot = Bootstrap(loop)
    try:
        yield loop, boot
    finally:
        boot.close()
        loop.stop()


@pytest.fixture
def swarm(model_dir: Path, tmp_path: Path, peers: tuple[PeerLoop, Bootstrap]) -> Iterator[Swarm]:
    """A fresh ledger per test: every receipt due is this test's own."""
    s = Swarm(model_dir, tmp_path / "ledger", *peers)
    try:
        yield s
    finally:
        s.close()


def _close(v: Verifier) -> None:
    assert v.challenger is not None
    v.challenger.close()
    v.ledger.close()
    v.state.close()


def _verdict(swarm: Swarm, r: SignedReceipt) -> dict:
    (v,) = swarm.verdicts(r)
    return v


def test_session_block_is_one_per_session_uniform_over_sessions_and_secret_keyed() -> None:
    secret, node = os.urandom(32), os.urandom(32)

    def receipt(session_id: bytes, step: int, start: int = 0, end: int = 4) -> Receipt:
        return Receipt(
            node_key=node,
            client_key=b"\1" * 32,
            model=b"\2" * 32,
            block_start=start,
            block_end=end,
            kind=Kind.INFERENCE,
            session_id=session_id,
            step=step,
            batch=1,
            tokens=1,
            input_hash=os.urandom(32),
            output_hash=os.urandom(32),
            blocks_root=os.urandom(32),
            request_ref=os.urandom(32),
            timestamp_ms=1,
        )

    sid = os.urandom(16)
    assert len({session_block(secret, receipt(sid, step)) for step in range(64)}) == 1
    assert len({challenged_block(secret, receipt(sid, step)) for step in range(64)}) > 1  # forward-style
    n, sessions = 4, 4000
    counts = Counter(session_block(secret, receipt(os.urandom(16), 0)) for _ in range(sessions))
    assert set(counts) == set(range(n))
    sd = (sessions * (1 / n) * (1 - 1 / n)) ** 0.5
    assert all(abs(c - sessions / n) < 5 * sd for c in counts.values()), counts
    spans = Counter(session_block(secret, receipt(os.urandom(16), 0, 8, 11)) for _ in range(300))
    assert set(spans) == {8, 9, 10}
    # another secret draws other blocks: a node cannot tell a session's block from another verifier's
    sids = [os.urandom(16) for _ in range(200)]
    other = os.urandom(32)
    same = sum(
        block_of_session(secret, node, s, 0, 4) == block_of_session(other, node, s, 0, 4) for s in sids
    )
    assert same < 100


@pytest.mark.parametrize("narrow", [True, False], ids=["rows-at-once", "prefix-extended"])
def test_sampled_steps_of_a_session_share_one_block_and_reuse_its_prefix(
    swarm: Swarm, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, narrow: bool
) -> None:
    if not narrow:  # price layer calls at nothing, as for a wide model: no rows computed ahead
        monkeypatch.setattr("verifier.recompute.CALL_OVERHEAD_FLOPS", 0.0)
    node = HonestNode(swarm.model_dir, 0, 4)
    peer = swarm.serve(node)
    _, receipts = swarm.session(node, range(6))
    forward = swarm.client.chain([node], torch.randn(1, 5, HIDDEN) * 0.02)
    swarm.post(receipts + forward)
    v = swarm.verifier(tmp_path / "state.sqlite", session_quiet_s=0.0)
    try:
        assert v.poll_once() == 7
        block = session_block(v.secret, receipts[0].receipt)
        verdicts = [_verdict(swarm, r) for r in receipts]
        assert [(x["result"], x["block"]) for x in verdicts] == [(int(Result.PASS), block)] * 6
        if narrow:  # one layer call computed the block's rows for all six steps
            assert (v.loader.prefixes.row_hits, v.loader.prefixes.hits) == (6, 0)
        else:  # the first check computed the prompt's keys/values; each later one extended them
            assert (v.loader.prefixes.row_hits, v.loader.prefixes.hits) == (0, 5)
        assert peer.challenges == 7
        assert _verdict(swarm, forward[0])["block"] == challenged_block(v.secret, forward[0].receipt)
        assert v.poll_once() == 0
    finally:
        _close(v)


def test_a_session_still_receiving_receipts_is_not_challenged_before_it_is_quiet(
    swarm: Swarm, tmp_path: Path
) -> None:
    node, peer, sid, first = swarm.honest_session(range(3))
    v = swarm.verifier(tmp_path / "state.sqlite", session_quiet_s=30.0, session_max_wait_s=300.0)
    try:
        assert v.poll_once() == 0
        _, more = swarm.session(node, range(3, 5), sid)  # the session goes on
        swarm.post(more)
        v.clock = lambda: time.time() + 20  # 20 s on: its last receipt is not 30 s old
        assert v.poll_once() == 0
        assert peer.challenges == 0 and not v.state.session_closed(node.identity.public_key, sid)
        assert all(swarm.verdicts(r) == [] for r in first + more)
        v.clock = lambda: time.time() + 31  # quiet now
        assert v.poll_once() == 5
        block = session_block(v.secret, first[0].receipt)
        assert [_verdict(swarm, r)["block"] for r in first + more] == [block] * 5
        assert peer.challenges == 5 and v.loader.prefixes.row_hits == 5
    finally:
        _close(v)


def test_a_verifier_restarted_mid_session_neither_repeats_nor_skips_nor_redraws(
    swarm: Swarm, tmp_path: Path
) -> None:
    node, peer, _, receipts = swarm.honest_session(range(6))
    state = tmp_path / "state.sqlite"
    first = swarm.verifier(state, session_quiet_s=0.0)
    done = 0
    check = first.check

    def crash_after_two(signed: SignedReceipt) -> object:
        nonlocal done
        if done == 2:
            raise RuntimeError("killed")
        done += 1
        return check(signed)

    first.check = crash_after_two  # type: ignore[method-assign]
    with pytest.raises(RuntimeError):
        first.poll_once()
    _close(first)
    assert peer.challenges == 6  # the session's steps are opened together, before judging

    second = swarm.verifier(state, session_quiet_s=0.0)
    try:
        assert second.poll_once() == 4
        assert second.poll_once() == 0
        assert peer.challenges == 10  # only the 4 steps without a verdict are opened again
        block = session_block(second.secret, receipts[0].receipt)
        assert [_verdict(swarm, r)["block"] for r in receipts] == [block] * 6
        assert second.loader.prefixes.row_hits == 4  # the rest computed together, from its own openings
    finally:
        _close(second)


def test_a_node_cheating_on_one_block_late_in_its_sessions_is_caught_in_sessions_that_draw_it(
    swarm: Swarm, tmp_path: Path
) -> None:
    node = LateBlockCheater(swarm.model_dir, 0, 4, honest_steps=2, cheat_block=2)
    swarm.serve(node)
    state = tmp_path / "state.sqlite"
    secret = VerifierState(state).secret()  # the test plays the verifier's side to pick sessions
    drawn: dict[bool, list[bytes]] = {True: [], False: []}
    while min(len(d) for d in drawn.values()) < 2:
        sid = os.urandom(16)
        hit = block_of_session(secret, node.identity.public_key, sid, 0, 4) == node.cheat_block
        if len(drawn[hit]) < 2:
            drawn[hit].append(sid)
    sessions = {sid: swarm.session(node, range(4), sid)[1] for sids in drawn.values() for sid in sids}
    swarm.post([r for rs in sessions.values() for r in rs])
    v = swarm.verifier(state, session_quiet_s=0.0)
    try:
        assert v.poll_once() == 16
        for sid, receipts in sessions.items():
            got = [(_verdict(swarm, r)["result"], _verdict(swarm, r)["reason"]) for r in receipts]
            if sid in drawn[True]:  # the honest first steps pass, the cheated ones fail
                assert (
                    got
                    == [(int(Result.PASS), int(Reason.NONE))] * 2
                    + [(int(Result.FAIL), int(Reason.OUTPUT_MISMATCH))] * 2
                )
            else:
                assert got == [(int(Result.PASS), int(Reason.NONE))] * 4
    finally:
        _close(v)


def test_a_node_that_learned_its_session_block_gains_nothing_on_later_steps(
    swarm: Swarm, tmp_path: Path
) -> None:
    node = BlockLearner(swarm.model_dir, 0, 4)
    swarm.serve(node)
    sid, early = swarm.session(node, range(3))
    swarm.post(early)
    # the session looks busy, but waited its maximum: checked while it still runs
    v = swarm.verifier(tmp_path / "state.sqlite", session_quiet_s=3600.0, session_max_wait_s=0.0)
    try:
        assert v.poll_once() == 3
        learned = node.learned[sid]
        assert learned == session_block(v.secret, early[0].receipt)
        assert all(_verdict(swarm, r)["result"] == int(Result.PASS) for r in early)
        _, late = swarm.session(node, range(3, 11), sid)  # every block but the learned one cheated
        swarm.post(late)
        assert v.poll_once() == 8
        blocks = [_verdict(swarm, r)["block"] for r in late]
        assert blocks == [challenged_block(v.secret, r.receipt) for r in late]  # their own draws
        results = [_verdict(swarm, r)["result"] for r in late]
        assert results == [int(Result.PASS if b == learned else Result.FAIL) for b in blocks]
        assert int(Result.FAIL) in results  # all 8 draws on the learned block: 1 in 65,536
    finally:
        _close(v)


def test_a_busy_session_is_checked_at_the_max_wait_even_when_the_verifier_clock_lags(
    swarm: Swarm, tmp_path: Path
) -> None:
    node, peer, _, receipts = swarm.honest_session(range(3))
    v = swarm.verifier(tmp_path / "state.sqlite", session_quiet_s=3600.0, session_max_wait_s=300.0)
    try:
        start = time.time() - 1000  # our clock 1000 s behind the ledger's
        v.clock = lambda: start
        assert v.poll_once() == 0
        v.clock = lambda: start + 299
        assert v.poll_once() == 0 and peer.challenges == 0
        v.clock = lambda: start + 301  # 301 s since we first saw it due: no longer held
        assert v.poll_once() == 3
        assert {_verdict(swarm, r)["block"] for r in receipts} == {
            session_block(v.secret, receipts[0].receipt)
        }
    finally:
        _close(v)


def test_a_last_pass_checks_sessions_that_may_still_run(swarm: Swarm, tmp_path: Path) -> None:
    node, _, sid, receipts = swarm.honest_session(range(2))
    v = swarm.verifier(tmp_path / "state.sqlite", session_quiet_s=3600.0)
    try:
        assert v.poll_once() == 0
        assert v.poll_once(final=True) == 2  # `corolla verifier --once`: no later pass to wait for
        assert v.state.session_closed(node.identity.public_key, sid)
    finally:
        _close(v)
