"""The verifier service end to end: a real ledger process, real hivemind peers answering
`open`, honest and cheating nodes' signed receipts, verdicts posted, nodes slashed,
a restart that neither repeats nor skips, and a false verdict exposed by recheck."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from protocol.identity import Identity
from protocol.receipts import Kind, SignedReceipt
from protocol.verdicts import Reason, Result, SignedVerdict, Verdict
from tests.adversaries.openings_peer import Bootstrap, OpeningsPeer, PeerLoop
from tests.adversaries.work import (
    Client,
    HonestNode,
    MismatchNode,
    NoiseNode,
    OtherModelNode,
    QuantizedNode,
    ReplayNode,
    SkipBlockNode,
)
from tests.ledger.harness import LedgerProcess
from verifier.challenger import Challenger
from verifier.judge import OPENINGS, evidence_hash
from verifier.ledger_client import LedgerClient
from verifier.recheck import recheck
from verifier.service import ServiceConfig, Verifier
from verifier.state import VerifierState

EXPECTED = {
    "noise": Reason.OUTPUT_MISMATCH,
    "other_model": Reason.OUTPUT_MISMATCH,
    "skip_block": Reason.OUTPUT_MISMATCH,
    "int8": Reason.OUTPUT_MISMATCH,
    "nf4": Reason.OUTPUT_MISMATCH,
    "replay": Reason.REPLAY,
    "receipt_mismatch": Reason.CHAIN_MISMATCH,
}


@dataclass
class Swarm:
    ledger: LedgerProcess
    bootstrap: Bootstrap
    honest: list[HonestNode]
    cheaters: dict[str, HonestNode]
    silent: HonestNode
    peers: dict[bytes, OpeningsPeer] = field(default_factory=dict)
    receipts: dict[str, list[SignedReceipt]] = field(default_factory=dict)  # node name -> its receipts


def _hidden(seed: int, batch: int = 2, length: int = 5) -> torch.Tensor:
    return torch.randn(batch, length, 64, generator=torch.Generator().manual_seed(seed)) * 0.02


@pytest.fixture(scope="module")
def swarm(
    model_dir: Path, other_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Swarm]:
    from models.manifest_builder import load_manifest

    tmp = tmp_path_factory.mktemp("verifier-swarm")
    ledger = LedgerProcess(f"sqlite:///{tmp / 'ledger.db'}", tmp, args=["--grace-s", "3600"]).start()
    loop = PeerLoop()
    boot = Bootstrap(loop)
    honest = [HonestNode(model_dir, 0, 2), HonestNode(model_dir, 2, 4)]
    cheaters: dict[str, HonestNode] = {
        "noise": NoiseNode(model_dir, 0, 2),
        "other_model": OtherModelNode(model_dir, 2, 4, other_model_dir=other_model_dir),
        "skip_block": SkipBlockNode(model_dir, 0, 2),
        "int8": QuantizedNode(model_dir, 2, 4, quantize="int8"),
        "nf4": QuantizedNode(model_dir, 0, 2, quantize="nf4"),
        "replay": ReplayNode(model_dir, 2, 4),
        "receipt_mismatch": MismatchNode(model_dir, 0, 2),
    }
    silent = HonestNode(model_dir, 0, 2)
    s = Swarm(ledger, boot, honest, cheaters, silent)
    for node in [*honest, *cheaters.values()]:
        s.peers[node.identity.public_key] = OpeningsPeer(loop, boot.maddrs, node)
    s.peers[silent.identity.public_key] = OpeningsPeer(loop, boot.maddrs, silent, silent=True)

    client = Client()
    seed = 0
    for _ in range(3):  # honest two-node chains
        s.receipts.setdefault("honest", []).extend(client.chain(honest, _hidden(seed := seed + 1)))
    for name, node in cheaters.items():
        for _ in range(2):
            if name == "receipt_mismatch":  # an honest next hop receives what it really sent
                r, _nxt = client.chain([node, honest[1]], _hidden(seed := seed + 1))
                s.receipts.setdefault("honest", []).append(_nxt)
            elif node.start == 0:
                r = client.chain([node], _hidden(seed := seed + 1))[0]
            else:
                r = client.chain([honest[0], node], _hidden(seed := seed + 1))[1]
            s.receipts.setdefault(name, []).append(r)
    for _ in range(3):
        s.receipts.setdefault("silent", []).append(client.chain([silent], _hidden(seed := seed + 1))[0])

    poster = ledger.client(Identity.generate())
    assert poster.post("/v1/manifests", load_manifest(model_dir).to_json()).status_code == 200
    everything = [r for rs in s.receipts.values() for r in rs]
    resp = poster.post("/v1/receipts", {"receipts": [r.to_json() for r in everything]})
    assert resp.status_code == 200, resp.text
    assert len(resp.json()["accepted"]) == len(everything), resp.json()
    poster.close()
    try:
        yield s
    finally:
        for p in s.peers.values():
            p.close()
        boot.close()
        loop.stop()
        ledger.stop()


def _verifier(swarm: Swarm, state: Path, ledger_url: str | None = None, **kw: object) -> Verifier:
    config = ServiceConfig(
        ledger=swarm.ledger.url,
        model=str(swarm.honest[0].model_dir),
        key_file="",
        sample_rate=1.0,
        challenge_timeout_s=1.5,
        unreachable_limit=3,
        **kw,
    )  # type: ignore[arg-type]
    challenger = Challenger(swarm.bootstrap.maddrs, timeout_s=config.challenge_timeout_s)
    return Verifier(
        config,
        swarm.ledger.verifier,
        LedgerClient(ledger_url or swarm.ledger.url, swarm.ledger.verifier),
        challenger,
        VerifierState(state),
    )


def _verdicts(swarm: Swarm, receipt: SignedReceipt) -> list[dict]:
    client = LedgerClient(swarm.ledger.url)
    try:
        return list(client._get("/v1/verdicts", receipt=receipt.id.hex()))
    finally:
        client.close()


@pytest.fixture(scope="module")
def judged(swarm: Swarm, tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """Run the verifier twice over the queue, 'crashing' in between (the first run cannot
    reach the ledger to post, so its verdicts stay recorded but unposted)."""
    state = tmp_path_factory.mktemp("verifier-state") / "state.sqlite"
    first = _verifier(swarm, state)
    first_batch = [r for rs in swarm.receipts.values() for r in rs][:5]
    dead = LedgerClient("http://127.0.0.1:9", swarm.ledger.verifier, timeout_s=0.5)
    first.ledger, live = dead, first.ledger
    for r in first_batch:
        first.check(r)
    unposted = len(first.state.unposted())
    first.challenger.close()
    first.state.close()
    live.close()
    challenges_before = {k: p.challenges for k, p in swarm.peers.items()}

    second = _verifier(swarm, state)
    n = second.poll_once()
    again = second.poll_once()
    stats = second.stats
    second.challenger.close()
    second.state.close()
    return {
        "unposted": unposted,
        "first_batch": first_batch,
        "second_checked": n,
        "again": again,
        "stats": stats,
        "challenges_before": challenges_before,
        "state": state,
    }


def test_every_adversary_fails_with_its_reason_and_honest_nodes_pass(swarm: Swarm, judged: dict) -> None:
    for r in swarm.receipts["honest"]:
        results = [(v["result"], v["reason"]) for v in _verdicts(swarm, r)]
        assert results == [(int(Result.PASS), int(Reason.NONE))], (r.receipt.block_start, results)
    for name, reason in EXPECTED.items():
        fails = [
            v for r in swarm.receipts[name] for v in _verdicts(swarm, r) if v["result"] == int(Result.FAIL)
        ]
        assert fails, f"{name} was not caught"
        assert {v["reason"] for v in fails} == {int(reason)}, (name, fails)
    # the replayer's first answer was honest work: only the replay fails
    first, replayed = swarm.receipts["replay"]
    assert [v["result"] for v in _verdicts(swarm, first)] == [int(Result.PASS)]
    assert [v["result"] for v in _verdicts(swarm, replayed)] == [int(Result.FAIL)]


def test_silent_node_is_unreachable_then_failed(swarm: Swarm, judged: dict) -> None:
    verdicts = sorted(
        (v for r in swarm.receipts["silent"] for v in _verdicts(swarm, r)), key=lambda v: v["timestamp_ms"]
    )
    # in the order judged: two misses are unreachable, the third in a row is a failure
    assert [(v["result"], v["reason"]) for v in verdicts] == [
        (int(Result.UNREACHABLE), int(Reason.UNREACHABLE))
    ] * 2 + [(int(Result.FAIL), int(Reason.UNREACHABLE))]


def test_restarted_verifier_neither_repeats_nor_skips(swarm: Swarm, judged: dict) -> None:
    total = sum(len(rs) for rs in swarm.receipts.values())
    assert judged["unposted"] == 5  # the first run judged 5 receipts but could not post
    assert judged["again"] == 0  # nothing is due after the second run
    assert judged["second_checked"] == total - 5  # the 5 were re-posted (same ids), not judged again
    assert judged["stats"].checked == total - 5 and judged["stats"].reposted == 5
    for rs in swarm.receipts.values():
        for r in rs:
            assert len(_verdicts(swarm, r)) == 1, "every receipt has exactly one verdict"
    # the first run's receipts were challenged once, by the first run only
    state = VerifierState(judged["state"])
    try:
        assert state.count_verdicts() == total and not state.unposted()
    finally:
        state.close()


def test_cheaters_are_slashed_at_the_next_epoch_and_honest_nodes_are_not(swarm: Swarm, judged: dict) -> None:
    epoch = swarm.ledger.close_epoch()
    client = LedgerClient(swarm.ledger.url)
    try:
        for name, rs in swarm.receipts.items():
            if name == "honest":
                continue
            for r in rs:
                detail = client._get(f"/v1/receipts/{r.id.hex()}")
                verdicts = _verdicts(swarm, r)
                if any(v["result"] == int(Result.FAIL) for v in verdicts):
                    assert detail["status"] == "failed", name
                    assert [v["slash_epoch"] for v in verdicts] == [epoch["number"]], name
        # The ledger slashes up to the node's balance: the replayer had earned with its one
        # honest answer, and loses it; cheaters that never earned have nothing to take.
        replayer = client._get(f"/v1/accounts/{swarm.cheaters['replay'].identity.public_hex}")
        assert replayer["slashed"] > 0 and replayer["balance"] == 0
        assert epoch["slashed"] >= replayer["slashed"]
        for node in swarm.honest:
            account = client._get(f"/v1/accounts/{node.identity.public_hex}")
            assert account["slashed"] == 0 and account["earned"] > 0
    finally:
        client.close()


def test_recheck_reproduces_true_verdicts_and_exposes_a_false_one(
    swarm: Swarm, judged: dict, tmp_path: Path
) -> None:
    model = str(swarm.honest[0].model_dir)
    honest_receipt = swarm.receipts["honest"][0]
    noise_receipt = swarm.receipts["noise"][0]
    for r, result in ((honest_receipt, Result.PASS), (noise_receipt, Result.FAIL)):
        (v,) = _verdicts(swarm, r)
        assert v["result"] == int(result)
        # from the ledger's records alone: the evidence is stored with the verdict
        out = recheck(v["id"], ledger=swarm.ledger.url, model=model)
        assert out.reproduced, out.summary()
        out = recheck(v["id"], ledger=swarm.ledger.url, model=model, initial_peers=swarm.bootstrap.maddrs)
        assert out.reproduced, out.summary()

    # A receipt-only verdict (replay) is rechecked from the ledger, or from the verifier's own copy.
    (v,) = _verdicts(swarm, swarm.receipts["replay"][1])
    out = recheck(v["id"], ledger=swarm.ledger.url, model=model)
    assert out.reproduced, out.summary()
    (v,) = _verdicts(swarm, swarm.receipts["replay"][1])
    state = VerifierState(judged["state"])
    evidence = state.evidence(bytes.fromhex(v["id"]))
    state.close()
    assert evidence is not None
    (tmp_path / "evidence.bin").write_bytes(evidence)
    out = recheck(v["id"], ledger=swarm.ledger.url, model=model, openings_file=str(tmp_path / "evidence.bin"))
    assert out.reproduced, out.summary()

    # A malicious verifier fails an honest receipt, committing to the node's real openings.
    victim = swarm.receipts["honest"][1]
    node = next(n for n in swarm.honest if n.identity.public_key == victim.receipt.node_key)
    block = victim.receipt.block_start
    blob = OPENINGS + node.open(victim.id, block).to_bytes()
    liar = Identity.generate()
    swarm.ledger.client(swarm.ledger.admin).post("/v1/roles", {"key": liar.public_hex, "role": "verifier"})
    false = Verdict(
        receipt_id=victim.id,
        verifier_key=liar.public_key,
        block=block,
        result=Result.FAIL,
        reason=Reason.OUTPUT_MISMATCH,
        openings_hash=evidence_hash(blob),
        tolerance=1e-6,
        measured=0.5,
        timestamp_ms=1,
    ).sign(liar)
    posted = LedgerClient(swarm.ledger.url, liar).post_verdict(false, blob)
    assert posted["id"] == false.id.hex()
    out = recheck(false.id.hex(), ledger=swarm.ledger.url, model=model)  # the ledger's records suffice
    assert not out.reproduced and out.recomputed is not None and out.recomputed.result == Result.PASS
    assert json.loads(json.dumps(out.to_json()))["reproduced"] is False
    assert SignedVerdict.from_json(
        LedgerClient(swarm.ledger.url)._get(f"/v1/verdicts/{false.id.hex()}")["signed"]
    )
    assert victim.receipt.kind == Kind.FORWARD


def test_verifier_command_checks_what_is_due_once(swarm: Swarm, judged: dict, tmp_path: Path) -> None:
    import subprocess
    import sys

    client = Client()
    fresh = client.chain(swarm.honest, _hidden(999))
    poster = swarm.ledger.client(Identity.generate())
    assert (
        len(poster.post("/v1/receipts", {"receipts": [r.to_json() for r in fresh]}).json()["accepted"]) == 2
    )
    poster.close()
    key = tmp_path / "verifier.key"
    swarm.ledger.verifier.save(key)
    cmd = [
        sys.executable,
        "-m",
        "cli.main",
        "verifier",
        "--ledger",
        swarm.ledger.url,
        "--model",
        str(swarm.honest[0].model_dir),
        "--key",
        str(key),
        "--initial-peers",
        *swarm.bootstrap.maddrs,
        "--sample-rate",
        "1",
        "--once",
        "--state",
        str(tmp_path / "state.sqlite"),
        "--ready-file",
        str(tmp_path / "ready.json"),
    ]
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {
        "checked": 2,
        "passed": 2,
        "failed": 0,
        "unreachable": 0,
        "reposted": 0,
    }
    assert (
        json.loads((tmp_path / "ready.json").read_text())["verifier_key"] == swarm.ledger.verifier.public_hex
    )
    for r in fresh:
        assert [v["result"] for v in _verdicts(swarm, r)] == [int(Result.PASS)]
