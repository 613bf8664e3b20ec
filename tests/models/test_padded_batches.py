"""Left-padded batches (prompts of different lengths) match transformers given the same
attention_mask and position_ids, in a full forward and in incremental steps."""

from __future__ import annotations

import torch

from models.local_parts import LocalParts
from models.span import BlockSpan


def _padded_batch() -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(4, 300, (3, 8), generator=torch.Generator().manual_seed(7))
    mask = torch.ones(3, 8, dtype=torch.long)
    mask[1, :3] = 0  # 5-token prompt
    mask[2, :6] = 0  # 2-token prompt
    ids[mask == 0] = 3  # pad id
    return ids, mask


def _positions(mask: torch.Tensor) -> torch.Tensor:
    return (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)


def _reference_logits(arch_case, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    kwargs = {} if arch_case.arch == "bloom" else {"position_ids": _positions(mask)}
    with torch.no_grad():
        return arch_case.reference(ids, attention_mask=mask, **kwargs).logits


def test_padded_forward_matches_transformers(arch_case) -> None:
    ids, mask = _padded_batch()
    expected = _reference_logits(arch_case, ids, mask)
    parts = LocalParts.load(arch_case.model_dir)
    spans = [BlockSpan.load(arch_case.model_dir, 0, 2), BlockSpan.load(arch_case.model_dir, 2, 4)]
    with torch.no_grad():
        hidden = parts.embed(ids)
        for span in spans:
            hidden = span.forward(hidden, attention_mask=mask, position_ids=_positions(mask))
        logits = parts.head(hidden)
    real = mask.bool()
    torch.testing.assert_close(logits[real], expected[real], atol=1e-5, rtol=0)


def test_padded_steps_match_transformers(arch_case) -> None:
    ids, mask = _padded_batch()
    new_ids = torch.randint(4, 300, (3, 3), generator=torch.Generator().manual_seed(8))
    full_ids = torch.cat([ids, new_ids], 1)
    full_mask = torch.cat([mask, torch.ones(3, 3, dtype=torch.long)], 1)
    expected = _reference_logits(arch_case, full_ids, full_mask)

    parts = LocalParts.load(arch_case.model_dir)
    span = BlockSpan.load(arch_case.model_dir, 0, 4)
    cache = span.new_cache(3, 11)
    positions = _positions(full_mask)
    pieces = []
    with torch.no_grad():
        for a, b in [(0, 8), (8, 9), (9, 11)]:
            out = span.step(
                parts.embed(full_ids[:, a:b]),
                cache,
                attention_mask=full_mask[:, :b],
                position_ids=positions[:, a:b],
            )
            pieces.append(parts.head(out))
    logits = torch.cat(pieces, 1)
    real = full_mask.bool()
    torch.testing.assert_close(logits[real], expected[real], atol=1e-5, rtol=0)
