"""Keeps the node's announcement fresh on the DHT and withdraws it on shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import replace

from hivemind.dht.node import DHTNode
from hivemind.utils import get_dht_time

from protocol.dht_keys import ANNOUNCE_PERIOD_S, ANNOUNCE_TTL_S, OFFLINE_TTL_S, NodeAnnouncement, model_key

logger = logging.getLogger("corolla.node")


class Announcer:
    def __init__(self, dht: DHTNode, manifest_hash: bytes, announcement: NodeAnnouncement,
                 period_s: float = ANNOUNCE_PERIOD_S, ttl_s: float = ANNOUNCE_TTL_S):
        self.dht, self.key, self.announcement = dht, model_key(manifest_hash), announcement
        self.period_s, self.ttl_s = period_s, ttl_s
        self._task: asyncio.Task[None] | None = None
        self.last_expiration = 0.0

    async def store(self, announcement: NodeAnnouncement, ttl_s: float) -> bool:
        # The DHT keeps the value with the latest expiration: never store one older than the last.
        expiration = max(get_dht_time() + ttl_s, self.last_expiration + 1e-3)
        self.last_expiration = expiration
        ok = await self.dht.store(self.key, announcement.to_value(), expiration, subkey=announcement.peer_id)
        return bool(ok)

    async def start(self) -> None:
        """Announce once (so the caller knows it is visible), then refresh in the background."""
        if not await self.store(self.announcement, self.ttl_s):
            logger.warning("first DHT announcement was not stored; will retry")
        self._task = asyncio.create_task(self._refresh_forever())

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(self.period_s)
            try:
                await self.store(self.announcement, self.ttl_s)
            except Exception:
                logger.warning("DHT refresh failed", exc_info=True)

    async def withdraw(self) -> None:
        """Stop refreshing and mark this node offline so clients stop routing to it."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        offline = replace(self.announcement, state="offline")
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.store(offline, OFFLINE_TTL_S), 5.0)
        logger.info("withdrew announcement of blocks %d:%d", offline.start, offline.end)
