"""Ask a node for the openings of one block of one of its receipts, over hivemind P2P.

The verifier joins the DHT as a client, finds the node that signed a receipt by the
Ed25519 key in its announcement (protocol/dht_keys.py), and sends one `open` frame on a
fresh stream (protocol/messages.py). Anything but well-formed openings within the
timeout is a `ChallengeFailure` (the verdict will say UNREACHABLE); how many of those in
a row turn into a failure is the service's policy, counted in `UnreachableCounter`.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from protocol.dht_keys import NodeAnnouncement, model_key
from protocol.messages import (
    HANDLERS,
    Frame,
    RemoteError,
    WireError,
    open_request,
    raise_if_error,
    read_frame,
    write_frame,
)
from verifier.openings import Openings

T = TypeVar("T")
MAX_OPENINGS_BYTES = 1 << 30


class ChallengeFailure(Exception):
    """The node could not be found, did not answer in time, or answered nonsense/an error."""


class Challenger:
    """A DHT client peer on a private event-loop thread; `challenge()` is synchronous."""

    def __init__(self, initial_peers: list[str], *, timeout_s: float = 10.0, start_timeout_s: float = 60.0):
        if not initial_peers:
            raise ValueError("no --initial-peers: the verifier needs the DHT to reach nodes")
        from hivemind.dht.node import DHTNode

        self.timeout_s = timeout_s
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self.loop.run_forever, name="corolla-verifier-p2p", daemon=True
        )
        self._thread.start()
        self._dialed: set[str] = set()
        try:
            self.dht: Any = self._run(
                DHTNode.create(
                    initial_peers=list(initial_peers),
                    client_mode=True,
                    cache_nearest=0,
                    host_maddrs=["/ip4/127.0.0.1/tcp/0"],
                ),
                start_timeout_s,
            )
        except BaseException:
            self._stop_loop()
            raise

    def _run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def _find(self, model: bytes, node_key: bytes) -> NodeAnnouncement:
        found = await self.dht.get(model_key(model), latest=True)
        entries = found.value.values() if found is not None and isinstance(found.value, dict) else []
        for entry in entries:
            ann = NodeAnnouncement.from_value(getattr(entry, "value", None))
            if ann is not None and ann.node_key == node_key.hex():
                return ann
        raise ChallengeFailure(f"node {node_key.hex()[:16]} is not announced on the DHT for this model")

    async def _open(self, model: bytes, node_key: bytes, receipt_id: bytes, block: int) -> Frame:
        from hivemind.p2p import PeerID
        from hivemind.utils.multiaddr import Multiaddr

        ann = await self._find(model, node_key)
        peer = PeerID.from_base58(ann.peer_id)
        if ann.peer_id not in self._dialed and ann.maddrs:
            with contextlib.suppress(Exception):
                await self.dht.p2p._client.connect(peer, [Multiaddr(m) for m in ann.maddrs])
            self._dialed.add(ann.peer_id)
        _, reader, writer = await self.dht.p2p.call_binary_stream_handler(peer, HANDLERS["open"])
        try:
            await write_frame(writer, open_request(receipt_id, block))
            return await read_frame(reader, MAX_OPENINGS_BYTES)
        finally:
            writer.close()

    def challenge(self, model: bytes, node_key: bytes, receipt_id: bytes, block: int) -> Openings:
        """Openings of `block` of the receipt, or ChallengeFailure (never another exception)."""
        try:
            frame = self._run(
                asyncio.wait_for(self._open(model, node_key, receipt_id, block), self.timeout_s),
                self.timeout_s + 5.0,
            )
            return Openings.from_frame(raise_if_error(frame))
        except ChallengeFailure:
            raise
        except TimeoutError:
            raise ChallengeFailure(f"no answer within {self.timeout_s:.1f} s") from None
        except RemoteError as exc:
            raise ChallengeFailure(f"node refused: {exc}") from None
        except (asyncio.IncompleteReadError, WireError, ValueError) as exc:
            raise ChallengeFailure(f"unusable answer: {exc}") from None
        except Exception as exc:  # p2pd dial errors come as assorted types
            raise ChallengeFailure(f"could not reach the node: {type(exc).__name__}: {exc}") from None

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._run(self.dht.shutdown(), 10)
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

    def __enter__(self) -> Challenger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
