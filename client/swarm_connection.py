"""The client's link to the swarm: a DHT client peer on a background event-loop thread.

User code is synchronous (`generate`, autograd); all network I/O runs on one private loop
thread and is reached through `run(coro)`. Nothing ever blocks on that loop from inside
it, and sessions are closed explicitly (never from `__del__`), which rules out the
self-deadlock Petals hit when the garbage collector closed a session on the loop thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from hivemind.dht.node import DHTNode
from hivemind.p2p import PeerID
from hivemind.utils.multiaddr import Multiaddr

from protocol.dht_keys import NodeAnnouncement, model_key
from protocol.messages import HANDLERS, Frame, read_frame, write_frame

T = TypeVar("T")


class SwarmConnection:
    """Owns the loop thread, the client's DHT peer and its libp2p daemon."""

    def __init__(self, initial_peers: list[str], *, start_timeout_s: float = 60.0):
        if not initial_peers:
            raise ValueError("initial_peers is empty: pass the multiaddr(s) printed by `corolla dht`")
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="corolla-client-loop", daemon=True)
        self._thread.start()
        self._connected: set[str] = set()
        try:
            self.dht: DHTNode = self.run(DHTNode.create(
                initial_peers=list(initial_peers), client_mode=True, cache_nearest=0,
                host_maddrs=["/ip4/127.0.0.1/tcp/0"]), timeout=start_timeout_s)
        except BaseException:
            self._stop_loop()
            raise

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run a coroutine on the loop thread and wait for its result (from any other thread)."""
        if threading.current_thread() is self._thread:
            raise RuntimeError("SwarmConnection.run called from its own loop thread (would deadlock)")
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def announcements(self, manifest_hash: bytes) -> list[NodeAnnouncement]:
        """Every node currently announcing the model (online or withdrawn)."""
        found = await self.dht.get(model_key(manifest_hash), latest=True)
        if found is None or not isinstance(found.value, dict):
            return []
        anns = []
        for entry in found.value.values():
            ann = NodeAnnouncement.from_value(getattr(entry, "value", None))
            if ann is not None:
                anns.append(ann)
        return anns

    async def open_stream(self, ann: NodeAnnouncement, rpc: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """Open a libp2p stream to a node's handler, dialing its announced addresses once."""
        peer = PeerID.from_base58(ann.peer_id)
        if ann.peer_id not in self._connected and ann.maddrs:
            with contextlib.suppress(Exception):
                await self.dht.p2p._client.connect(peer, [Multiaddr(m) for m in ann.maddrs])
            self._connected.add(ann.peer_id)
        _, reader, writer = await self.dht.p2p.call_binary_stream_handler(peer, HANDLERS[rpc])
        return reader, writer

    async def call(self, ann: NodeAnnouncement, rpc: str, frame: Frame, max_payload: int = 1 << 30) -> Frame:
        """One request, one reply, on a fresh stream. IncompleteReadError if the node vanished."""
        reader, writer = await self.open_stream(ann, rpc)
        try:
            await write_frame(writer, frame)
            return await read_frame(reader, max_payload)
        finally:
            writer.close()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.run(self.dht.shutdown(), timeout=10)
        self._stop_loop()

    def _stop_loop(self) -> None:
        async def cancel_pending() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(cancel_pending(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=5)
