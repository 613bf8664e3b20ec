"""Where nodes announce themselves on the hivemind DHT, and what the announcement says.

One DHT key per model: `model_key(manifest_hash)`. Each node stores one subkey (its peer
id, base58) whose value is a `NodeAnnouncement` as a plain dict, with an expiration a
little past its refresh period, so a node that dies disappears on its own. One `get` of
the model key gives a client every node serving that model; no per-step lookups.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

ANNOUNCE_TTL_S = 30.0  # expiration of an announcement
ANNOUNCE_PERIOD_S = 10.0  # refresh period (well inside the TTL)
OFFLINE_TTL_S = 10.0  # how long a withdrawal ("offline") stays visible


def model_key(manifest_hash: bytes) -> str:
    """DHT key under which all nodes serving the model announce."""
    if len(manifest_hash) != 32:
        raise ValueError("a model manifest hash is 32 bytes")
    return f"corolla/v1/model/{manifest_hash.hex()}"


@dataclass
class NodeAnnouncement:
    """What a node publishes about itself (the DHT value under its peer-id subkey).

    `throughput` is single-token inference steps per second of the whole span, measured at
    start-up; `forward_tps` is tokens/s of a batched forward. `state` is "online" or
    "offline" (withdrawn on shutdown). `node_key` is the node's Ed25519 public key (hex,
    empty until the node has an identity). `maddrs` lets a client connect directly.
    """

    peer_id: str
    start: int
    end: int
    throughput: float
    forward_tps: float
    state: str
    node_key: str = ""
    maddrs: list[str] = field(default_factory=list)
    dtype: str = "float32"
    version: int = 1

    def to_value(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_value(cls, value: Any) -> NodeAnnouncement | None:
        """Parse an announcement; None for anything malformed (never trust the DHT)."""
        if not isinstance(value, dict):
            return None
        try:
            ann = cls(
                peer_id=str(value["peer_id"]),
                start=int(value["start"]),
                end=int(value["end"]),
                throughput=float(value["throughput"]),
                forward_tps=float(value.get("forward_tps", 0.0)),
                state=str(value["state"]),
                node_key=str(value.get("node_key", "")),
                maddrs=[str(m) for m in value.get("maddrs", [])],
                dtype=str(value.get("dtype", "float32")),
                version=int(value.get("version", 1)),
            )
        except (KeyError, TypeError, ValueError):
            return None
        if ann.start < 0 or ann.end <= ann.start or ann.throughput < 0:
            return None
        return ann

    @property
    def online(self) -> bool:
        return self.state == "online"
