"""A node computes forwards and inference steps one block at a time so the task pool can
preempt between blocks; the outputs must be exactly BlockSpan's, bit for bit."""

from __future__ import annotations

import pytest
import torch

from models import SUPPORTED_ARCHS
from models.span import BlockSpan
from node.block_steps import forward_blocks, step_blocks

HIDDEN = 64


@pytest.fixture(scope="module", params=SUPPORTED_ARCHS)
def span(request, small_model) -> BlockSpan:
    model_dir = small_model(request.param, layers=3, hidden=HIDDEN)
    return BlockSpan.load(model_dir, 1, 3)


def test_forward_in_blocks_equals_span_forward_bit_for_bit(span):
    torch.manual_seed(0)
    hidden = torch.randn(2, 7, HIDDEN)
    with torch.inference_mode():
        expected, expected_blocks = span.forward(hidden, block_outputs=True)
    outputs = list(forward_blocks(span, hidden))
    assert len(outputs) == span.num_blocks
    assert all(torch.equal(a, b) for a, b in zip(outputs, expected_blocks, strict=True))
    assert torch.equal(outputs[-1], expected)


def test_step_in_blocks_equals_span_step_and_fills_the_cache_alike(span):
    torch.manual_seed(1)
    reference, ours = span.new_cache(2, 16), span.new_cache(2, 16)
    for new in (5, 1, 1, 3):
        hidden = torch.randn(2, new, HIDDEN)
        with torch.inference_mode():
            expected = span.step(hidden, reference)
        blocks = step_blocks(span, hidden, ours)
        outputs = list(blocks)
        assert torch.equal(outputs[-1], expected)
        assert ours.length == reference.length
    assert torch.equal(ours.keys, reference.keys) and torch.equal(ours.values, reference.values)


def test_grad_mode_does_not_leak_between_blocks(span):
    """Between two blocks the compute thread runs other tasks: they must find the default
    grad mode, not the inference mode a block ran under."""
    blocks = forward_blocks(span, torch.randn(1, 3, HIDDEN))
    next(blocks)
    assert not torch.is_inference_mode_enabled() and torch.is_grad_enabled()


def test_a_step_that_does_not_fit_leaves_the_cache_unchanged(span):
    cache = span.new_cache(1, 4)
    list(step_blocks(span, torch.randn(1, 3, HIDDEN), cache))
    with pytest.raises(ValueError, match="max_length"):
        step_blocks(span, torch.randn(1, 2, HIDDEN), cache)
    assert cache.length == 3
