"""A node computing at lower precision than it announces is caught; honest ones are not.

The hard case of issue #5: int8 weights while announcing bfloat16. int8's error is inside
honest bf16 rounding, so the divergence bound lets it through; the lower-precision test
(verifier/precision.py) catches it by the direction of its error. Honest bf16 nodes of
several kinds (thread counts, another attention kernel, cached decoding) must pass.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from protocol.receipts import Kind
from protocol.verdicts import Reason, Result
from tests.adversaries.work import Client, HonestNode, QuantizedNode
from verifier.judge import Judgement, judge_evidence, judge_openings
from verifier.precision import WINDOW_ROWS, int8_round_trip, int8_score, lower_precision_score, row_window
from verifier.recompute import BlockLoader, compare_block
from verifier.tolerance import Thresholds

BF16 = torch.bfloat16
CHECKS = 6  # forward receipts per node, every block of the span challenged


def forward_judgements(
    node: HonestNode, loader: BlockLoader, thresholds: Thresholds, seed: int
) -> list[Judgement]:
    """`CHECKS` forward receipts of `node` (batch 1-2, 4-24 positions), every block opened."""
    g = torch.Generator().manual_seed(seed)
    client, out = Client(), []
    for i in range(CHECKS):
        shape = (1 + i % 2, 4 + int(torch.randint(0, 21, (1,), generator=g)), 64)
        x = torch.randn(*shape, generator=g) * 0.02
        signed = client.receive(node.call(client.identity, x))
        for block in range(node.start, node.end):
            out.append(judge_openings(signed.receipt, node.open(signed.id, block), loader, thresholds))
    return out


def decode_judgements(
    node: HonestNode, loader: BlockLoader, thresholds: Thresholds, seed: int, steps: int = 8
) -> list[Judgement]:
    """One decode session (an 8-position prompt, then one-position steps), every step and
    block opened: the narrowest checks there are (one row of 64)."""
    g = torch.Generator().manual_seed(seed)
    client, session, history, out = Client(), os.urandom(16), [], []
    for step in range(steps + 1):
        x = torch.randn(1, 8 if step == 0 else 1, 64, generator=g) * 0.02
        signed = client.receive(
            node.call(client.identity, x, kind=Kind.INFERENCE, session_id=session, step=step)
        )
        history.append(signed.receipt)
        if step == 0:
            continue
        for block in range(node.start, node.end):
            out.append(
                judge_openings(
                    signed.receipt, node.open(signed.id, block), loader, thresholds, history=history
                )
            )
    return out


@pytest.fixture(scope="module")
def int8_bf16(model_dir: Path) -> QuantizedNode:
    return QuantizedNode(model_dir, 0, 2, quantize="int8", dtype=BF16)


def test_shipped_thresholds_run_the_precision_test_where_the_bound_is_loose(thresholds: Thresholds) -> None:
    for dtype in ("bfloat16", "float16"):
        for device in ("cpu", "cuda"):
            t = thresholds.lookup(dtype, device)
            assert t.precision_bound == 0.5 and t.precision_min_z == 5.0, t
            assert t.precision_max_observed < t.precision_bound  # no honest check failed
            assert t.precision_est_false_positive_rate < 1e-4
    assert thresholds.lookup("float32", "cpu").precision_bound == 0.0  # 1.5e-6 already excludes int8
    assert thresholds.lookup("float32", "cuda").precision_bound == 0.5  # extrapolated bound does not


def test_int8_announcing_bfloat16_passes_the_divergence_bound_but_fails_as_lower_precision(
    int8_bf16: QuantizedNode, loader: BlockLoader, thresholds: Thresholds
) -> None:
    judgements = forward_judgements(int8_bf16, loader, thresholds, seed=1)
    assert [j.result for j in judgements] == [Result.FAIL] * len(judgements)
    for j in judgements:
        assert j.reason == Reason.OUTPUT_MISMATCH
        assert "lower precision than its announced bfloat16" in j.detail
        assert j.tolerance == 0.5 and 0.6 < j.measured < 1.5  # ~1: all of int8's error
    # what made the difference: the divergence alone stays within the bf16 bound
    op = int8_bf16.open(next(iter(int8_bf16.work)), 0)
    assert compare_block(loader, thresholds, 0, op.inputs, op.output).ok


def test_int8_announcing_bfloat16_fails_on_one_row_decode_steps(
    int8_bf16: QuantizedNode, loader: BlockLoader, thresholds: Thresholds
) -> None:
    judgements = decode_judgements(int8_bf16, loader, thresholds, seed=2)
    caught = [j for j in judgements if j.result == Result.FAIL]
    assert all(j.reason == Reason.OUTPUT_MISMATCH and "lower precision" in j.detail for j in caught)
    # one row of a 64-wide block is the weakest check (README: 99.5 % per check here)
    assert len(caught) >= len(judgements) - 1, [j.detail for j in judgements]


@pytest.mark.parametrize(
    "kw",
    [{}, {"threads": 1}, {"threads": 2}, {"attention": "math"}],
    ids=["default", "1-thread", "2-threads", "sdpa-math"],
)
def test_honest_bfloat16_nodes_pass_forward_and_decode_steps(
    model_dir: Path, loader: BlockLoader, thresholds: Thresholds, kw: dict[str, object]
) -> None:
    node = HonestNode(model_dir, 0, 2, dtype=BF16, **kw)  # type: ignore[arg-type]
    judgements = forward_judgements(node, loader, thresholds, seed=3) + decode_judgements(
        node, loader, thresholds, seed=4
    )
    assert [j.detail for j in judgements if j.result != Result.PASS] == []


def test_a_lower_precision_verdict_is_reproduced_from_its_evidence(
    int8_bf16: QuantizedNode, loader: BlockLoader, thresholds: Thresholds, model_dir: Path
) -> None:
    client = Client()
    x = torch.randn(2, 12, 64, generator=torch.Generator().manual_seed(5)) * 0.02
    signed = client.receive(int8_bf16.call(client.identity, x))
    first = judge_openings(signed.receipt, int8_bf16.open(signed.id, 1), loader, thresholds)
    again = judge_evidence(signed, first.evidence, BlockLoader(model_dir), thresholds)  # what recheck runs
    assert first.result == again.result == Result.FAIL
    assert (again.reason, again.measured, again.tolerance) == (first.reason, first.measured, first.tolerance)


def test_long_calls_are_scored_on_a_window_drawn_from_the_evidence(
    int8_bf16: QuantizedNode, loader: BlockLoader
) -> None:
    client = Client()
    x = torch.randn(2, 24, 64, generator=torch.Generator().manual_seed(6)) * 0.02
    signed = client.receive(int8_bf16.call(client.identity, x))
    op = int8_bf16.open(signed.id, 0)
    start, end = row_window(24, b"evidence")
    assert end - start == WINDOW_ROWS and 0 <= start and end <= 24
    windowed = lower_precision_score(loader, 0, op.inputs, op.output, seed=b"evidence")
    direct = lower_precision_score(loader, 0, op.inputs[:, :end], op.output[:, start:end])
    assert windowed.share == pytest.approx(direct.share, rel=1e-6) and windowed.fails(0.5, 5.0)
    # every window of the call can be drawn, so no positions are safe to fake
    assert {row_window(24, bytes([i])) for i in range(256)} == {(s, s + WINDOW_ROWS) for s in range(17)}


def test_int8_score_measures_the_share_of_the_simulated_error() -> None:
    g = torch.Generator().manual_seed(0)
    ref = torch.randn(2, 3, 64, generator=g)
    sim = ref + 0.01 * torch.randn(2, 3, 64, generator=g)
    noise = 0.002 * torch.randn(2, 3, 64, generator=g)
    cheat, honest = int8_score(sim + noise, ref, sim), int8_score(ref + noise, ref, sim)
    assert cheat.share == pytest.approx(1.0, abs=0.1) and cheat.z > 20 and cheat.fails(0.5, 5.0)
    assert abs(honest.share) < 0.1 and not honest.fails(0.5, 5.0)
    weak = int8_score(ref + 0.6 * (sim - ref) + 30 * noise, ref, sim)  # more than half, but in noise
    assert weak.share > 0.5 and weak.z < 5.0 and not weak.fails(0.5, 5.0)
    assert int8_score(ref, ref, ref).share == 0.0  # a simulation that changes nothing tests nothing
    w = torch.tensor([[127.0, -64.0, 1.0], [0.0, 0.0, 0.0]])  # on the int8 grid: unchanged
    assert torch.equal(int8_round_trip(w)[0], w[0]) and torch.equal(int8_round_trip(w)[1], w[1])
