"""Start a hivemind DHT peer (and its libp2p daemon) inside the current event loop."""

from __future__ import annotations

from hivemind.dht.node import DHTNode


async def start_dht_peer(
    initial_peers: list[str], host: str = "127.0.0.1", port: int = 0, *, client_mode: bool = False
) -> DHTNode:
    """A DHTNode whose P2P listens on host:port (0 = any free port) and bootstraps from peers."""
    return await DHTNode.create(
        initial_peers=list(initial_peers) or None,
        host_maddrs=[f"/ip4/{host}/tcp/{port}"],
        client_mode=client_mode,
        cache_nearest=0 if client_mode else 1,
    )


async def visible_maddrs(dht: DHTNode) -> list[str]:
    """Full multiaddrs (with /p2p/<peer id>) other peers can bootstrap from."""
    peer_id = dht.p2p.peer_id.to_base58()
    maddrs = [str(m) for m in await dht.p2p.get_visible_maddrs()]
    return [m if "/p2p/" in m else f"{m}/p2p/{peer_id}" for m in maddrs]
