"""Build a model's manifest (config + a content hash per block) from its safetensors files.

Block hash v1 (hex of 32 bytes), over the tensors stored under the block's prefix, sorted
by their name relative to that prefix (e.g. `self_attn.q_proj.weight`):

    digest(b"COROLLA/block/v1" || for each tensor: u16 len(name) || name (utf-8)
           || tensor_digest_raw(dtype, shape, raw bytes as stored))

It reads the raw bytes straight from the safetensors files (no torch), so the hash names
the weights as published whatever dtype a node later computes in.
`block_flops_per_token` = 2 × the parameter count of the largest block.
"""

from __future__ import annotations

import json
import mmap
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from protocol.hashing import digest, tensor_digest_raw
from protocol.manifests import ModelManifest

MANIFEST_FILE = "corolla-manifest.json"
BLOCK_DOMAIN = b"COROLLA/block/v1"
VOLATILE_CONFIG_KEYS = ("transformers_version", "_name_or_path", "_commit_hash")

# safetensors dtype code -> torch dtype name used by protocol.hashing
_DTYPES = {
    "F64": "float64",
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U8": "uint8",
    "BOOL": "bool",
    "F8_E4M3": "float8_e4m3fn",
    "F8_E5M2": "float8_e5m2",
}


@dataclass(frozen=True)
class StoredTensor:
    """Where one tensor's bytes live in a safetensors file."""

    file: Path
    dtype: str
    shape: tuple[int, ...]
    begin: int  # absolute byte offsets in the file
    end: int


def read_safetensors_header(file: Path) -> dict[str, StoredTensor]:
    with open(file, "rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(size))
    base = 8 + size
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        begin, end = info["data_offsets"]
        out[name] = StoredTensor(
            file,
            _DTYPES.get(info["dtype"], info["dtype"].lower()),
            tuple(info["shape"]),
            base + begin,
            base + end,
        )
    return out


def stored_tensors(model_dir: Path, files: Iterable[str] | None = None) -> dict[str, StoredTensor]:
    """The tensors of the checkpoint (or of the given weight files only), from the
    safetensors headers alone."""
    index = model_dir / "model.safetensors.index.json"
    if files is None:
        files = (
            sorted(set(json.loads(index.read_text())["weight_map"].values()))
            if index.is_file()
            else ["model.safetensors"]
        )
    out: dict[str, StoredTensor] = {}
    for name in files:
        if not (model_dir / name).is_file():
            raise FileNotFoundError(f"missing weights file {model_dir / name}")
        out.update(read_safetensors_header(model_dir / name))
    return out


def block_hash(tensors: dict[str, StoredTensor], prefix: str) -> tuple[str, int]:
    """(hex content hash, parameter count) of the tensors under `prefix`."""
    names = sorted(n for n in tensors if n.startswith(prefix))
    if not names:
        raise ValueError(f"no tensors named {prefix}* in the checkpoint")
    parts = [BLOCK_DOMAIN]
    params = 0
    maps: dict[Path, mmap.mmap] = {}
    try:
        for name in names:
            t = tensors[name]
            if t.file not in maps:
                with open(t.file, "rb") as f:
                    maps[t.file] = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            rel = name[len(prefix) :].encode()
            raw = memoryview(maps[t.file])[t.begin : t.end]
            try:
                parts += [struct.pack(">H", len(rel)), rel, tensor_digest_raw(t.dtype, t.shape, raw)]
            finally:
                raw.release()
            count = 1
            for d in t.shape:
                count *= d
            params += count
    finally:
        for m in maps.values():
            m.close()
    return digest(b"".join(parts)).hex(), params


def normalized_config(model_dir: Path) -> dict[str, Any]:
    """config.json without the keys that change with the library version or the path."""
    config = json.loads((model_dir / "config.json").read_text())
    for key in VOLATILE_CONFIG_KEYS:
        config.pop(key, None)
    return config


def build_manifest(model_dir: str | Path, *, name: str = "") -> ModelManifest:
    """Hash every block's stored weights; reads all of them once."""
    from models.architectures import arch_for_config
    from models.loading import checkpoint_prefix, load_config

    model_dir = Path(model_dir)
    config = load_config(model_dir)
    arch = arch_for_config(config)
    tensors = stored_tensors(model_dir)
    wmap = {k: "" for k in tensors}
    hashes, flops = [], 0
    for i in range(config.num_hidden_layers):
        prefix = checkpoint_prefix(wmap, arch.block_prefix(i), arch.base_prefix)
        h, params = block_hash(tensors, prefix)
        hashes.append(h)
        flops = max(flops, 2 * params)
    return ModelManifest(
        arch=arch.name,
        config=normalized_config(model_dir),
        num_blocks=config.num_hidden_layers,
        hidden_size=config.hidden_size,
        block_hashes=tuple(hashes),
        block_flops_per_token=flops,
        name=name or model_dir.name,
    )


def write_manifest(model_dir: str | Path, manifest: ModelManifest) -> Path:
    path = Path(model_dir) / MANIFEST_FILE
    path.write_text(json.dumps(manifest.to_json(), indent=1, sort_keys=True) + "\n")
    return path


def load_manifest(model: str | Path) -> ModelManifest:
    """The manifest of a model dir or hub name: its corolla-manifest.json if it parses, its
    hash checks and its config equals config.json; else built from the weights. Block hashes
    are checked against the weights when a span loads them (`BlockSpan.load`)."""
    from models.loading import resolve_model_dir

    model_dir = resolve_model_dir(model)
    path = model_dir / MANIFEST_FILE
    if path.is_file():
        try:
            manifest = ModelManifest.from_json(json.loads(path.read_text()))
        except ValueError:
            manifest = None
        if manifest is not None and manifest.config == normalized_config(model_dir):
            return manifest
    return build_manifest(model_dir, name=str(model) if not Path(model).is_dir() else "")
