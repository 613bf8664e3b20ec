"""Find a model's files and read only the tensors a caller needs.

A model is a local directory (config.json + safetensors, single file or sharded via
`model.safetensors.index.json`) or a hub name, resolved with `huggingface_hub` where a hub
is reachable. Tensors are read by name with `safetensors.safe_open`, so a node serving
blocks [start, end) never reads the rest of the checkpoint.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

INDEX_FILE = "model.safetensors.index.json"
HUB_NAME = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")
SINGLE_FILE = "model.safetensors"


class ModelNotFoundError(FileNotFoundError):
    """The model is neither a local directory nor downloadable."""


class CheckpointError(ValueError):
    """The checkpoint lacks tensors a block needs, or holds ones it does not expect."""


def resolve_model_dir(model: str | Path, *, allow_patterns: list[str] | None = None) -> Path:
    """Local directory holding `model`: itself if it is one, else a hub snapshot."""
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(f"{path} is not a model directory (no config.json)")
        return path
    name = str(model)
    if path.exists() or not HUB_NAME.fullmatch(name):
        raise ModelNotFoundError(f"no model directory at {name!r}")
    patterns = allow_patterns or ["*.json", "*.safetensors", "tokenizer*", "*.model", "*.txt"]
    try:
        from huggingface_hub import snapshot_download

        try:
            return Path(snapshot_download(name, allow_patterns=patterns, local_files_only=True))
        except Exception:
            return Path(snapshot_download(name, allow_patterns=patterns))
    except Exception as exc:  # offline, unknown repo, gated repo ...
        raise ModelNotFoundError(
            f"model {name!r} not found locally and the hub is unreachable ({type(exc).__name__})"
        ) from exc


def load_config(model_dir: Path) -> Any:
    """The transformers config of a model directory."""
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(model_dir)


def weight_map(model_dir: Path) -> dict[str, str]:
    """Tensor name -> safetensors file name (relative to model_dir)."""
    index = model_dir / INDEX_FILE
    if index.is_file():
        return dict(json.loads(index.read_text())["weight_map"])
    single = model_dir / SINGLE_FILE
    if single.is_file():
        from safetensors import safe_open

        with safe_open(single, framework="pt") as f:
            return {k: SINGLE_FILE for k in f.keys()}
    raise ModelNotFoundError(
        f"no safetensors weights in {model_dir} (expected {SINGLE_FILE} or {INDEX_FILE})"
    )


def read_tensors(
    model_dir: Path, names: Iterable[str], wmap: dict[str, str] | None = None
) -> dict[str, torch.Tensor]:
    """Read exactly the named tensors, opening only the shards that hold them."""
    from safetensors import safe_open

    wmap = weight_map(model_dir) if wmap is None else wmap
    by_file: dict[str, list[str]] = {}
    for name in names:
        if name not in wmap:
            raise CheckpointError(f"tensor {name!r} is not in the checkpoint of {model_dir}")
        by_file.setdefault(wmap[name], []).append(name)
    out: dict[str, torch.Tensor] = {}
    for file, keys in by_file.items():
        with safe_open(model_dir / file, framework="pt") as f:
            for key in keys:
                out[key] = f.get_tensor(key)
    return out


def names_with_prefix(wmap: dict[str, str], prefix: str) -> list[str]:
    return sorted(k for k in wmap if k.startswith(prefix))


def find_prefix(wmap: dict[str, str], candidates: Iterable[str]) -> str | None:
    """First candidate prefix that some tensor name starts with."""
    for prefix in candidates:
        if any(k.startswith(prefix) for k in wmap):
            return prefix
    return None


def checkpoint_prefix(wmap: dict[str, str], full_prefix: str, base_prefix: str) -> str:
    """The prefix as stored: checkpoints saved from the base model lack `base_prefix` ("transformer.")."""
    stripped = full_prefix[len(base_prefix) :] if full_prefix.startswith(base_prefix) else full_prefix
    found = find_prefix(wmap, [full_prefix, stripped])
    if found is None:
        raise CheckpointError(f"no tensors named {full_prefix}* in the checkpoint")
    return found


def load_block_layer(
    arch: Any, model_dir: Path, index: int, wmap: dict[str, str], dtype: torch.dtype, device: torch.device
) -> torch.nn.Module:
    """Decoder layer `index` with its checkpoint weights, built on the meta device first so no
    memory is spent on a random init; its parameters are frozen."""
    prefix = checkpoint_prefix(wmap, arch.block_prefix(index), arch.base_prefix)
    raw = read_tensors(model_dir, names_with_prefix(wmap, prefix), wmap)
    state = arch.convert_block_state({k[len(prefix) :]: v for k, v in raw.items()})
    state = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in state.items()}
    with torch.device("meta"):
        layer = arch.build_layer(index)
    try:
        layer.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as exc:
        raise CheckpointError(f"block {index} of {model_dir} does not fit its architecture: {exc}") from exc
    layer = layer.to(device)
    leftover = [n for n, t in [*layer.named_parameters(), *layer.named_buffers()] if t.is_meta]
    if leftover:
        raise CheckpointError(f"block {index}: tensors not in the checkpoint: {leftover}")
    return layer.eval().requires_grad_(False)
