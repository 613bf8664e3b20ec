"""Manifests name a model by its weights: deterministic, and per block."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from models.make_model import make_model
from models.manifest_builder import MANIFEST_FILE, build_manifest, load_manifest
from models.span import BlockSpan
from protocol.manifests import ModelManifest


@pytest.fixture(scope="module")
def model_dir(small_model) -> Path:
    return small_model("llama", layers=3, hidden=64)


def test_same_arguments_give_the_same_manifest(model_dir: Path, tmp_path: Path) -> None:
    again = make_model("llama", tmp_path / "again", layers=3, hidden=64)
    first, second = load_manifest(model_dir), load_manifest(again)
    assert first.manifest_hash() == second.manifest_hash()
    assert (model_dir / "model.safetensors").read_bytes() == (again / "model.safetensors").read_bytes()

    other_seed = load_manifest(make_model("llama", tmp_path / "seed1", layers=3, hidden=64, seed=1))
    assert all(a != b for a, b in zip(first.block_hashes, other_seed.block_hashes, strict=True))
    assert other_seed.manifest_hash() != first.manifest_hash()


def test_manifest_file_matches_a_rebuild(model_dir: Path) -> None:
    stored = ModelManifest.from_json(json.loads((model_dir / MANIFEST_FILE).read_text()))
    rebuilt = build_manifest(model_dir)
    assert stored.manifest_hash() == rebuilt.manifest_hash()
    assert (stored.arch, stored.num_blocks, stored.hidden_size) == ("llama", 3, 64)
    assert "transformers_version" not in stored.config


def test_flops_per_token_are_twice_the_block_parameters(model_dir: Path) -> None:
    span = BlockSpan.load(model_dir, 0, 1)
    params = sum(p.numel() for p in span.layers.parameters())
    assert load_manifest(model_dir).block_flops_per_token == 2 * params


def test_changing_one_block_changes_only_its_hash(model_dir: Path, tmp_path: Path) -> None:
    tampered = tmp_path / "tampered"
    shutil.copytree(model_dir, tampered)
    weights = load_file(tampered / "model.safetensors")
    weights["model.layers.1.mlp.down_proj.weight"][0, 0] += 1e-3
    save_file(weights, tampered / "model.safetensors", metadata={"format": "pt"})

    honest, changed = load_manifest(model_dir), build_manifest(tampered)
    differ = [i for i in range(3) if honest.block_hashes[i] != changed.block_hashes[i]]
    assert differ == [1]

    # the stale manifest file still names the honest weights: block 1 no longer loads
    assert load_manifest(tampered).manifest_hash() == honest.manifest_hash()
    with pytest.raises(ValueError, match="do not match the model manifest"):
        BlockSpan.load(tampered, 1, 2)
    BlockSpan.load(tampered, 2, 3)


def test_stale_manifest_is_rebuilt_when_config_changes(model_dir: Path, tmp_path: Path) -> None:
    edited = tmp_path / "edited"
    shutil.copytree(model_dir, edited)
    config = json.loads((edited / "config.json").read_text())
    config["rms_norm_eps"] = 1e-3
    (edited / "config.json").write_text(json.dumps(config))
    rebuilt = load_manifest(edited)
    assert rebuilt.config["rms_norm_eps"] == 1e-3
    assert rebuilt.block_hashes == load_manifest(model_dir).block_hashes
    assert rebuilt.manifest_hash() != load_manifest(model_dir).manifest_hash()


def test_weights_saved_in_bfloat16_hash_differently(tmp_path: Path) -> None:
    half = load_manifest(make_model("llama", tmp_path / "bf16", layers=1, hidden=64, dtype="bfloat16"))
    full = load_manifest(make_model("llama", tmp_path / "fp32", layers=1, hidden=64))
    assert half.block_hashes != full.block_hashes
    span = BlockSpan.load(tmp_path / "bf16", 0, 1)  # computes in fp32 from bf16 weights
    assert span.forward(torch.randn(1, 2, 64)).dtype == torch.float32
