"""Opening and receipt checks on real BlockSpan work: honest openings pass, each kind of
tampering is named by its reason, and the judgement round-trips through its evidence."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import torch

from protocol.receipts import Kind
from protocol.verdicts import Reason, Result
from tests.adversaries.work import Client, HonestNode, SkipBlockNode
from verifier.checks import check_chain, check_openings, check_prefix, check_replay
from verifier.judge import OPENINGS, judge_evidence, judge_openings
from verifier.openings import Openings
from verifier.recompute import BlockLoader
from verifier.sampling import SamplingPolicy, challenged_block
from verifier.tolerance import Thresholds


def _x(seed: int, batch: int = 2, length: int = 4) -> torch.Tensor:
    return torch.randn(batch, length, 64, generator=torch.Generator().manual_seed(seed)) * 0.02


@pytest.fixture(scope="module")
def node(model_dir: Path) -> HonestNode:
    return HonestNode(model_dir, 1, 4)


def test_honest_openings_pass_every_block(
    node: HonestNode, loader: BlockLoader, thresholds: Thresholds
) -> None:
    client = Client()
    signed = client.receive(node.call(client.identity, _x(1)))
    assert signed.verify_client()
    for block in range(1, 4):
        op = node.open(signed.id, block)
        assert check_openings(signed.receipt, op) is None
        j = judge_openings(signed.receipt, op, loader, thresholds)
        assert (j.result, j.reason) == (Result.PASS, Reason.NONE)
        assert j.measured <= j.tolerance
        again = judge_evidence(signed, j.evidence, loader, thresholds)  # what recheck runs
        assert (again.result, again.measured, again.evidence_hash) == (j.result, j.measured, j.evidence_hash)


def test_inference_steps_open_the_whole_prefix_and_pass(
    model_dir: Path, loader: BlockLoader, thresholds: Thresholds
) -> None:
    node, client, session = HonestNode(model_dir, 0, 2), Client(), os.urandom(16)
    receipts = []
    for step, length in enumerate((5, 1, 1, 2)):
        time.sleep(0.002)
        d = node.call(
            client.identity, _x(10 + step, length=length), kind=Kind.INFERENCE, session_id=session, step=step
        )
        receipts.append(client.receive(d))
    last = receipts[-1]
    op = node.open(last.id, 0)
    assert op.inputs.shape[1] == 9 and op.output.shape[1] == 2
    history = [r.receipt for r in receipts[:-1]]
    assert check_prefix(last.receipt, op, history) is None
    assert judge_openings(last.receipt, op, loader, thresholds, history=history).result == Result.PASS
    op.inputs[:, 2] += 0.01  # the node rewrites its history
    assert check_prefix(last.receipt, op, history).reason == Reason.OPENING_HASH_MISMATCH  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("tamper", "reason"),
    [
        ("output", Reason.MERKLE_MISMATCH),
        ("input_first_block", Reason.OPENING_HASH_MISMATCH),
        ("input_inner_block", Reason.MERKLE_MISMATCH),
        ("shape", Reason.MALFORMED),
        ("other_receipt", Reason.RECEIPT_MISMATCH),
        ("leaves", Reason.MERKLE_MISMATCH),
    ],
)
def test_tampered_openings_are_named(node: HonestNode, tamper: str, reason: Reason) -> None:
    client = Client()
    signed = client.receive(node.call(client.identity, _x(2)))
    block = 1 if tamper == "input_first_block" else 2
    op = node.open(signed.id, block)
    if tamper == "output":
        op.output = op.output + 1e-3
        op.leaves = None
    elif tamper.startswith("input"):
        op.inputs = op.inputs.clone()
        op.inputs[0, -1, 0] += 1e-3
    elif tamper == "shape":
        op.output = op.output[:1]
    elif tamper == "other_receipt":
        op.receipt = client.receive(node.call(client.identity, _x(3)))
    elif tamper == "leaves":
        assert op.leaves is not None
        op.leaves = [*op.leaves[:-1], os.urandom(32)]
    finding = check_openings(signed.receipt, op)
    assert finding is not None and finding.reason == reason, finding


def test_skipped_block_is_caught_whichever_block_is_opened(
    model_dir: Path, loader: BlockLoader, thresholds: Thresholds
) -> None:
    node, client = SkipBlockNode(model_dir, 0, 4, skip=2), Client()
    signed = client.receive(node.call(client.identity, _x(4)))
    for block in range(4):
        j = judge_openings(signed.receipt, node.open(signed.id, block), loader, thresholds)
        assert (j.result, j.reason) == (Result.FAIL, Reason.OUTPUT_MISMATCH), block
        assert "skipped" in j.detail


def test_openings_blob_round_trips(node: HonestNode) -> None:
    client = Client()
    signed = client.receive(node.call(client.identity, _x(5)))
    op = node.open(signed.id, 3)
    back = Openings.from_bytes(op.to_bytes())
    assert back.to_bytes() == op.to_bytes()
    assert torch.equal(back.inputs, op.inputs) and back.leaves == op.leaves and back.receipt.id == signed.id
    with pytest.raises(ValueError):
        Openings.from_bytes(op.to_bytes()[:-3])
    with pytest.raises(ValueError):
        judge_evidence(
            signed, OPENINGS + b"\x00\x00\x00\x05junk", BlockLoader(node.model_dir), Thresholds({})
        )


def test_chain_break_is_blamed_on_the_unacknowledged_hop(model_dir: Path) -> None:
    a, b, client = HonestNode(model_dir, 0, 2), HonestNode(model_dir, 2, 4), Client()
    ra, rb = client.chain([a, b], _x(6))
    assert check_chain(ra, [rb]) is None and check_chain(rb, [ra]) is None
    # the same hop with a receipt that commits to something else than what b received
    forged = a.call(client.identity, _x(7), session_id=ra.receipt.session_id).signed
    assert check_chain(forged, [rb]).reason == Reason.CHAIN_MISMATCH  # type: ignore[union-attr]
    # b is acknowledged: its own check never blames it for a's break
    assert check_chain(rb, [forged]) is None


def test_replay_needs_an_earlier_receipt_with_the_same_output_and_another_input(node: HonestNode) -> None:
    client = Client()
    first = client.receive(node.call(client.identity, _x(8)))
    time.sleep(0.002)
    same_input = client.receive(node.call(client.identity, _x(8)))
    assert same_input.receipt.output_hash == first.receipt.output_hash
    assert check_replay(same_input.receipt, [first.receipt]) is None  # same input, same output: honest
    time.sleep(0.002)
    other = node.call(client.identity, _x(9)).signed.receipt
    from dataclasses import replace

    replayed = replace(other, output_hash=first.receipt.output_hash)
    assert check_replay(replayed, [first.receipt]).reason == Reason.REPLAY  # type: ignore[union-attr]
    assert check_replay(first.receipt, [replayed]) is None  # the original is never blamed


def test_sampling_boosts_new_and_valuable_nodes_and_blocks_are_uniform(node: HonestNode) -> None:
    policy = SamplingPolicy(base_rate=0.05)
    veteran = {"passes": 100, "fails": 0, "receipts": 100, "claimed": 100}
    assert policy.node_rate(veteran, 1.0) == pytest.approx(0.05)
    assert policy.node_rate({**veteran, "passes": 3}, 1.0) == pytest.approx(0.2)
    assert policy.node_rate({**veteran, "claimed": 300}, 1.0) == pytest.approx(0.15)
    assert policy.node_rate({"passes": 0, "receipts": 1, "claimed": 100}, 1.0) == pytest.approx(0.8)
    assert SamplingPolicy(base_rate=0.5).node_rate({"passes": 0, "receipts": 1, "claimed": 100}, 1.0) == 1.0
    client = Client()
    signed = client.receive(node.call(client.identity, _x(11)))
    secret = os.urandom(32)
    assert challenged_block(secret, signed.receipt) == challenged_block(secret, signed.receipt)
    counts = {b: 0 for b in range(1, 4)}
    for _ in range(600):
        counts[challenged_block(os.urandom(32), signed.receipt)] += 1
    assert min(counts.values()) > 140, counts
