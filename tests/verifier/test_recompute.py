"""The decode-step reference: prefix keys/values only, then the whole block on the new rows.

For every supported architecture it must be the computation an honest node's cached step
does (up to float32 noise far below the float32 threshold), and no further from the
whole-block-over-the-whole-prefix recompute than that honest step is (which calibration
counts as honest). Held keys/values are reused only for bit-identical prefix rows, and
anything the cheap path cannot do falls back to the full recompute.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from models import SUPPORTED_ARCHS
from models.local_parts import LocalParts
from models.span import BlockSpan
from protocol.receipts import Kind
from protocol.verdicts import Reason, Result
from tests.adversaries.work import Client, HonestNode
from verifier import recompute as rc
from verifier.judge import judge_openings
from verifier.recompute import (
    BlockLoader,
    PrefixCache,
    PrefixKV,
    cached_prefix_rows,
    compare_block,
    full_prefix_rows,
    reference_rows,
)
from verifier.tolerance import Thresholds, divergence

SHAPES = [(1, 40, 1), (2, 17, 3), (3, 6, 4), (1, 2, 1)]  # (batch, prefix + new, new)


def _block_inputs(model_dir: Path, batch: int = 3, length: int = 40) -> tuple[BlockSpan, list[torch.Tensor]]:
    """Blocks 0-1 in float32 and the hidden states that really enter them."""
    span = BlockSpan.load(model_dir, 0, 2)
    ids = torch.randint(4, 300, (batch, length), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        h = LocalParts.load(model_dir).embed(ids)
        _, outs = span.forward(h, block_outputs=True)
    return span, [h.detach(), outs[0].detach()]


def _node_step(model_dir: Path, block: int, x: torch.Tensor, new: int) -> torch.Tensor:
    """An honest node's cached decoding: the prefix as one step, then the new rows."""
    span = BlockSpan.load(model_dir, block, block + 1)
    cache = span.new_cache(x.shape[0], x.shape[1])
    if x.shape[1] > new:
        span.step(x[:, :-new], cache)
    return span.step(x[:, -new:], cache)  # type: ignore[return-value]


@pytest.fixture(scope="module")
def fp32_bound() -> float:
    return Thresholds.load().lookup("float32", "cpu").threshold


@pytest.mark.parametrize("arch", SUPPORTED_ARCHS)
def test_cheap_prefix_is_the_cached_step_and_as_close_to_the_full_recompute(
    arch: str, small_model: Callable[..., Path], fp32_bound: float
) -> None:
    model_dir = small_model(arch, layers=4, hidden=64)
    span, inputs = _block_inputs(model_dir)
    assert arch in rc.CHEAP_PREFIX_ARCHS
    for block in (0, 1):
        for batch, length, new in SHAPES:
            x = inputs[block][:batch, :length].contiguous()
            rows = x[:, -new:]
            node = _node_step(model_dir, block, x, new)
            with torch.no_grad():
                full = full_prefix_rows(span, block, x, new)
                for ride_along in (0, length):  # a key/value pass of its own, or one call
                    cheap = cached_prefix_rows(span, block, x, new, ride_along=ride_along)
                    assert cheap is not None and cheap.shape == node.shape
                    # a separate key/value pass is the node's step; one call over every row
                    # (nothing held, all prefix rows ride along) is the full forward
                    twin = node if ride_along == 0 else full
                    assert divergence(cheap, twin, rows) <= 0.25 * fp32_bound
                    assert divergence(cheap, full, rows) <= divergence(node, full, rows) + 0.25 * fp32_bound
                    if arch == "llama":  # the calibrated model: within the shipped bound itself
                        assert divergence(cheap, full, rows) <= fp32_bound


@pytest.mark.parametrize("arch", ["llama", "bloom", "falcon"])
def test_held_prefix_keys_values_follow_a_decoding_node_step_after_step(
    arch: str, small_model: Callable[..., Path], fp32_bound: float
) -> None:
    model_dir = small_model(arch, layers=4, hidden=64)
    span, inputs = _block_inputs(model_dir, batch=1)
    held, session = PrefixCache(), os.urandom(16)
    nodes = [BlockSpan.load(model_dir, b, b + 1) for b in (0, 1)]
    caches = [n.new_cache(1, 40) for n in nodes]
    for block in (0, 1):
        nodes[block].step(inputs[block][:, :19], caches[block])
    for length in range(20, 40):
        for block in (0, 1):
            x = inputs[block][:, :length]
            node = nodes[block].step(x[:, -1:], caches[block])
            kept = reference_rows(span, block, x, 1, prefixes=held, session=session)
            full = full_prefix_rows(span, block, x, 1)
            rows = x[:, -1:]
            # at least as close to the decoding node as the full recompute is, and no further
            # from the full recompute than that honest node is
            assert divergence(kept, node, rows) <= divergence(full, node, rows) + 0.25 * fp32_bound
            assert divergence(kept, full, rows) <= divergence(node, full, rows) + 0.25 * fp32_bound
    assert held.hits == 2 * 19  # every step after the first reused its block's keys/values


def test_held_keys_values_are_not_reused_for_a_changed_prefix(model_dir: Path) -> None:
    span, inputs = _block_inputs(model_dir, batch=1)
    held, session = PrefixCache(), b"session"
    x = inputs[0][:, :30].clone()
    reference_rows(span, 0, x[:, :29], 1, prefixes=held, session=session)
    x[:, 3] += 0.01  # the node opens a different history this time
    out = reference_rows(span, 0, x, 1, prefixes=held, session=session)
    assert held.hits == 0
    assert torch.equal(out, reference_rows(span, 0, x, 1))
    # the other batch size or another session key never matches either
    assert held.start(session + (0).to_bytes(4, "big"), x.expand(2, -1, -1), 29).rows == 0
    assert held.start(b"other" + (0).to_bytes(4, "big"), x, 29).rows == 0


def test_unlisted_architecture_gets_the_full_recompute(
    model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    span, inputs = _block_inputs(model_dir, batch=2)
    x = inputs[1][:, :25]
    monkeypatch.setattr(rc, "CHEAP_PREFIX_ARCHS", frozenset())
    held = PrefixCache()
    out = reference_rows(span, 1, x, 2, prefixes=held, session=b"s")
    assert torch.equal(out, full_prefix_rows(span, 1, x, 2)) and held.hits == 0


def test_layer_that_never_writes_its_cache_gets_the_full_recompute(
    model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    span, inputs = _block_inputs(model_dir, batch=2)
    x = inputs[1][:, :25]
    call_layer = span.arch.call_layer
    monkeypatch.setattr(
        span.arch, "call_layer", lambda layer, h, li, window, cache: call_layer(layer, h, li, window, None)
    )
    kv = PrefixKV()
    assert cached_prefix_rows(span, 1, x, 2, kv, ride_along=0) is None
    assert cached_prefix_rows(span, 1, x, 2, PrefixKV(), ride_along=25) is None
    assert torch.equal(reference_rows(span, 1, x, 2), full_prefix_rows(span, 1, x, 2))


def test_decode_session_checked_step_after_step_passes_and_a_faked_step_fails(
    model_dir: Path, thresholds: Thresholds
) -> None:
    loader = BlockLoader(model_dir, capacity=2)
    node, client, session = HonestNode(model_dir, 0, 2), Client(), os.urandom(16)
    gen = torch.Generator().manual_seed(5)
    for step in range(12):
        time.sleep(0.002)
        x = torch.randn(1, 8 if step == 0 else 1, 64, generator=gen) * 0.02
        d = node.call(client.identity, x, kind=Kind.INFERENCE, session_id=session, step=step)
        signed = client.receive(d)
        for block in (0, 1):
            op = node.open(signed.id, block)
            j = judge_openings(signed.receipt, op, loader, thresholds)
            assert (j.result, j.reason) == (Result.PASS, Reason.NONE), j.detail
            assert j.measured <= 0.25 * j.tolerance
    assert loader.prefixes.hits == 2 * 11  # every step after the prompt reused its block's keys/values
    key = signed.receipt.node_key + session
    faked = op.output + 0.05 * op.output.std() * torch.randn(op.output.shape, generator=gen)
    assert not compare_block(loader, thresholds, 1, op.inputs, faked, session=key).ok


def test_session_rows_computed_at_once_are_the_step_by_step_reference(
    model_dir: Path, fp32_bound: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, inputs = _block_inputs(model_dir, batch=1)
    x, steps, key = inputs[1], (21, 28, 39), b"node-and-session"  # a session's sampled steps' last rows
    ahead, one_by_one = BlockLoader(model_dir), BlockLoader(model_dir)
    assert rc.extend_session_rows(ahead, 1, x, steps[0], len(steps), session=key)
    for step in steps:
        opened = x[:, : step + 1]
        got = rc.recompute(ahead, 1, opened, 1, session=key)
        want = rc.recompute(one_by_one, 1, opened, 1, session=key)
        assert divergence(got, want, opened[:, -1:]) <= 0.25 * fp32_bound
    assert (ahead.prefixes.row_hits, one_by_one.prefixes.row_hits, one_by_one.prefixes.hits) == (3, 0, 2)
    changed = x[:, :30].clone()
    changed[:, 5] += 0.01  # another history than the one computed ahead: recomputed, not read
    assert torch.equal(
        rc.recompute(ahead, 1, changed, 1, session=key), rc.recompute(BlockLoader(model_dir), 1, changed, 1)
    )
    assert ahead.prefixes.row_hits == 3
    monkeypatch.setattr(rc, "CALL_OVERHEAD_FLOPS", 0.0)  # wide blocks: the rows between cost more than calls
    assert not rc.extend_session_rows(BlockLoader(model_dir), 1, x, steps[0], len(steps), session=key)
