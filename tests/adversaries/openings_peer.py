"""Real hivemind peers that announce a node's key on the DHT and answer its `open` RPC.

Each `OpeningsPeer` is one libp2p peer serving the openings of one `HonestNode` (or
cheater) from tests/adversaries/work.py, with the wire format of protocol/messages.py:
the verifier reaches it exactly as it reaches a real node. `silent=True` makes it
accept the stream and never answer (a node that ignores challenges).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from typing import Any

from hivemind.dht.node import DHTNode
from hivemind.utils import get_dht_time

from protocol.dht_keys import NodeAnnouncement, model_key
from protocol.messages import HANDLERS, ErrorCode, error_frame, read_frame, write_frame
from tests.adversaries.work import HonestNode


class PeerLoop:
    """One event loop thread hosting every test peer."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Any, timeout: float = 60.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        async def cancel_pending() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        with contextlib.suppress(Exception):
            self.run(cancel_pending(), 10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


async def _maddrs(dht: DHTNode) -> list[str]:
    peer_id = dht.p2p.peer_id.to_base58()
    return [m if "/p2p/" in m else f"{m}/p2p/{peer_id}" for m in map(str, await dht.p2p.get_visible_maddrs())]


class Bootstrap:
    """The swarm's DHT bootstrap peer."""

    def __init__(self, loop: PeerLoop):
        self.loop = loop
        self.dht: DHTNode = loop.run(DHTNode.create(host_maddrs=["/ip4/127.0.0.1/tcp/0"]))
        self.maddrs: list[str] = loop.run(_maddrs(self.dht))

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.loop.run(self.dht.shutdown(), 10)


class OpeningsPeer:
    def __init__(self, loop: PeerLoop, initial_peers: list[str], node: HonestNode, *, silent: bool = False):
        self.loop, self.node, self.silent = loop, node, silent
        self.challenges = 0
        self.dht: DHTNode = loop.run(
            DHTNode.create(initial_peers=initial_peers, host_maddrs=["/ip4/127.0.0.1/tcp/0"])
        )
        loop.run(self.dht.p2p.add_binary_stream_handler(HANDLERS["open"], self._handle))
        peer_id = self.dht.p2p.peer_id.to_base58()
        ann = NodeAnnouncement(
            peer_id=peer_id,
            start=node.start,
            end=node.end,
            throughput=1.0,
            forward_tps=1.0,
            state="online",
            node_key=node.identity.public_hex,
            maddrs=loop.run(_maddrs(self.dht)),
            dtype=str(node.dtype).removeprefix("torch."),
        )
        assert loop.run(
            self.dht.store(model_key(node.model), ann.to_value(), get_dht_time() + 600, subkey=peer_id)
        )

    async def _handle(self, _info: Any, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            frame = await read_frame(reader)
            self.challenges += 1
            if self.silent:
                await asyncio.sleep(3600)
            receipt_id, block = bytes(frame.meta["receipt_id"]), int(frame.meta["block"])
            if receipt_id not in self.node.work:
                await write_frame(writer, error_frame(ErrorCode.NOT_FOUND, "unknown or expired receipt"))
            else:
                await write_frame(writer, self.node.open(receipt_id, block).to_frame())
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.loop.run(self.dht.shutdown(), 10)
