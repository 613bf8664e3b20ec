"""Model manifests: how the swarm names a model (config + a content hash per block).

Torch-free on purpose: the ledger prices work from a manifest without loading weights.
`models/` builds manifests from weights; everybody else only reads them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from protocol.hashing import digest

MANIFEST_DOMAIN = b"COROLLA/manifest/v1"


@dataclass(frozen=True)
class ModelManifest:
    """Identity of a model in the swarm.

    `block_hashes[i]` is the content hash of block i's weights (names, dtypes, shapes,
    bytes), so two peers serving "the same" model provably serve the same weights.
    `block_flops_per_token` is the price unit: ~2 × the block's parameter count
    (multiply-adds of one token through one block, attention over the prefix ignored).
    """

    arch: str
    config: dict[str, Any]
    num_blocks: int
    hidden_size: int
    block_hashes: tuple[str, ...]  # hex digests, one per block
    block_flops_per_token: int
    name: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def canonical_json(self) -> bytes:
        body = {
            "arch": self.arch,
            "config": self.config,
            "num_blocks": self.num_blocks,
            "hidden_size": self.hidden_size,
            "block_hashes": list(self.block_hashes),
            "block_flops_per_token": self.block_flops_per_token,
        }
        return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()

    def manifest_hash(self) -> bytes:
        """32-byte id of the model: digest over the canonical JSON (name excluded)."""
        return digest(MANIFEST_DOMAIN + self.canonical_json())

    def to_json(self) -> dict[str, Any]:
        return {
            "arch": self.arch,
            "config": self.config,
            "num_blocks": self.num_blocks,
            "hidden_size": self.hidden_size,
            "block_hashes": list(self.block_hashes),
            "block_flops_per_token": self.block_flops_per_token,
            "name": self.name,
            "extra": self.extra,
            "manifest_hash": self.manifest_hash().hex(),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ModelManifest:
        """Parse and check a manifest; raises ValueError with a readable reason."""
        try:
            m = cls(
                arch=str(data["arch"]),
                config=dict(data["config"]),
                num_blocks=int(data["num_blocks"]),
                hidden_size=int(data["hidden_size"]),
                block_hashes=tuple(str(h) for h in data["block_hashes"]),
                block_flops_per_token=int(data["block_flops_per_token"]),
                name=str(data.get("name", "")),
                extra=dict(data.get("extra", {})),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"malformed model manifest: {exc!r}") from exc
        if m.num_blocks != len(m.block_hashes) or m.num_blocks <= 0:
            raise ValueError("malformed model manifest: num_blocks does not match block_hashes")
        claimed = data.get("manifest_hash")
        if claimed is not None and claimed != m.manifest_hash().hex():
            raise ValueError("model manifest hash does not match its contents")
        return m
