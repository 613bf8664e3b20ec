"""Spans read only their own blocks' weights; local parts only the client's modules."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from models.loading import ModelNotFoundError, resolve_model_dir
from models.local_parts import LocalParts
from models.span import BlockSpan


def _reference_block_names(reference, prefix: str, blocks: range) -> set[str]:
    names = set()
    for name, _ in reference.named_parameters():
        for i in blocks:
            if name.startswith(f"{prefix}{i}."):
                names.add(f"{i - blocks.start}.{name[len(prefix) + len(str(i)) + 1 :]}")
    return names


def test_span_holds_exactly_its_blocks_parameters(arch_case) -> None:
    span = BlockSpan.load(arch_case.model_dir, 1, 3)
    prefix = span.arch.block_prefix_template.split("{i}")[0]
    expected = _reference_block_names(arch_case.reference, prefix, range(1, 3))
    assert {name for name, _ in span.layers.named_parameters()} == expected
    assert len(span.layers) == 2
    assert not any(p.requires_grad for p in span.layers.parameters())
    assert (span.start, span.end, span.hidden_size) == (1, 3, arch_case.reference.config.hidden_size)


def test_local_parts_hold_only_the_client_modules(arch_case) -> None:
    parts = LocalParts.load(arch_case.model_dir)
    names = {name for name, _ in parts.named_parameters()}
    assert not any(".self_attn" in n or ".mlp" in n or ".h." in n for n in names)
    count = sum(p.numel() for p in parts.parameters())  # tied weights count once
    reference_blocks = sum(
        p.numel() for n, p in arch_case.reference.named_parameters() if ".layers." in n or ".h." in n
    )
    assert count == sum(p.numel() for p in arch_case.reference.parameters()) - reference_blocks
    tied = arch_case.reference.config.tie_word_embeddings
    assert (parts.lm_head.weight is parts.embed_tokens.weight) == bool(tied)
    assert all(p.requires_grad for p in parts.parameters())


@pytest.fixture(scope="module")
def sharded_llama(small_model) -> Path:
    return small_model("llama", layers=4, hidden=64, max_shard_size="40KB")


def test_sharded_checkpoint_loads_the_same_span(sharded_llama: Path, small_model) -> None:
    single = small_model("llama", layers=4, hidden=64)
    assert (sharded_llama / "model.safetensors.index.json").is_file()
    hidden = torch.randn(2, 5, 64)
    torch.testing.assert_close(
        BlockSpan.load(sharded_llama, 1, 3).forward(hidden), BlockSpan.load(single, 1, 3).forward(hidden)
    )
    ids = torch.tensor([[5, 6, 7]])
    torch.testing.assert_close(LocalParts.load(sharded_llama).embed(ids), LocalParts.load(single).embed(ids))


def test_span_loads_without_the_shards_of_other_blocks(sharded_llama: Path, tmp_path: Path) -> None:
    index = json.loads((sharded_llama / "model.safetensors.index.json").read_text())
    wanted = {
        f for k, f in index["weight_map"].items() if k.startswith(("model.layers.2.", "model.layers.3."))
    }
    every = set(index["weight_map"].values())
    assert every - wanted, "the shards should split blocks apart"
    partial = tmp_path / "partial"
    partial.mkdir()
    for item in sharded_llama.iterdir():
        if not item.name.endswith(".safetensors") or item.name in wanted:
            shutil.copy(item, partial / item.name)

    span = BlockSpan.load(partial, 2, 4)
    hidden = torch.randn(1, 4, 64)
    torch.testing.assert_close(span.forward(hidden), BlockSpan.load(sharded_llama, 2, 4).forward(hidden))
    with pytest.raises(FileNotFoundError):
        BlockSpan.load(partial, 0, 1)


def test_bad_span_range_is_refused(small_model) -> None:
    model_dir = small_model("llama", layers=4, hidden=64)
    for start, end in [(2, 2), (-1, 1), (3, 5)]:
        with pytest.raises(ValueError, match="block span"):
            BlockSpan.load(model_dir, start, end)
    with pytest.raises(ValueError, match="quantize"):
        BlockSpan.load(model_dir, 0, 1, quantize="int3")


def test_unknown_model_name_gets_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="not found locally and the hub is unreachable"):
        resolve_model_dir("corolla-tests/no-such-model")
    with pytest.raises(ModelNotFoundError, match="no config.json"):
        resolve_model_dir(tmp_path)
    with pytest.raises(ModelNotFoundError, match="no model directory at"):
        resolve_model_dir(tmp_path / "missing")


def test_bfloat16_span_is_close_to_float32(small_model) -> None:
    model_dir = small_model("llama", layers=4, hidden=64)
    hidden = torch.randn(1, 6, 64)
    exact = BlockSpan.load(model_dir, 0, 4).forward(hidden)
    half = BlockSpan.load(model_dir, 0, 4, dtype=torch.bfloat16)
    out = half.forward(hidden.to(torch.bfloat16))
    assert out.dtype == torch.bfloat16
    relative = ((out.float() - exact).norm() / exact.norm()).item()
    assert 0 < relative < 0.05


@pytest.mark.parametrize("mode, low, high", [("int8", 1e-4, 0.1), ("nf4", 1e-3, 0.5)])
def test_quantized_span_runs_at_lower_precision(small_model, mode: str, low: float, high: float) -> None:
    model_dir = small_model("llama", layers=4, hidden=64)
    hidden = torch.randn(2, 6, 64)
    exact = BlockSpan.load(model_dir, 0, 2).forward(hidden)
    span = BlockSpan.load(model_dir, 0, 2, quantize=mode)
    out = span.forward(hidden)
    relative = ((out - exact).norm() / exact.norm()).item()
    assert low < relative < high
    cache = span.new_cache(2, 6)
    torch.testing.assert_close(
        torch.cat([span.step(hidden[:, :4], cache), span.step(hidden[:, 4:], cache)], 1), out
    )
    kinds = {type(m).__name__ for m in span.layers.modules()}
    assert ("Linear4bit" if mode == "nf4" else "Linear8bitLt") in kinds
    assert "Linear" not in kinds


def test_checkpoint_missing_a_block_tensor_is_a_clear_error(small_model, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    from models.loading import CheckpointError
    from models.manifest_builder import build_manifest, write_manifest

    broken = tmp_path / "broken"
    shutil.copytree(small_model("llama", layers=4, hidden=64), broken)
    weights = load_file(broken / "model.safetensors")
    del weights["model.layers.0.mlp.up_proj.weight"]
    save_file(weights, broken / "model.safetensors", metadata={"format": "pt"})
    write_manifest(broken, build_manifest(broken))  # consistent manifest, incomplete block
    with pytest.raises(CheckpointError, match="up_proj"):
        BlockSpan.load(broken, 0, 1)
    BlockSpan.load(broken, 1, 2)
