"""Choosing a chain of nodes whose spans tile a range of blocks, fastest first.

Expected latency of a hop = measured round trip to the peer (EWMA; a default until we
have one) + 1 / announced single-token throughput. The chain minimising the sum is found
by dynamic programming over block boundaries. A failed peer is banned at once for a
while, so recovery never dials a dead node twice; announcements are refreshed from the
DHT when stale or when no route exists.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from protocol.dht_keys import NodeAnnouncement

logger = logging.getLogger("corolla.client")

DEFAULT_RTT_S = 0.002


class NoRouteError(RuntimeError):
    """No chain of online, unbanned nodes covers the requested blocks."""


@dataclass
class Router:
    fetch: Callable[[], Awaitable[list[NodeAnnouncement]]]  # reads the model's announcements from the DHT
    num_blocks: int
    refresh_s: float = 10.0
    ban_s: float = 60.0
    announcements: list[NodeAnnouncement] = field(default_factory=list)
    rtt: dict[str, float] = field(default_factory=dict)
    banned_until: dict[str, float] = field(default_factory=dict)
    fetched_at: float = -1e9

    async def refresh(self) -> None:
        self.announcements = await self.fetch()
        self.fetched_at = time.monotonic()

    def ban(self, peer_id: str, reason: str) -> None:
        self.banned_until[peer_id] = time.monotonic() + self.ban_s
        logger.warning("banned node %s for %.0f s: %s", peer_id[-8:], self.ban_s, reason)

    def record_rtt(self, peer_id: str, seconds: float) -> None:
        old = self.rtt.get(peer_id)
        self.rtt[peer_id] = seconds if old is None else 0.8 * old + 0.2 * seconds

    def usable(self, include_banned: bool = False) -> list[NodeAnnouncement]:
        now = time.monotonic()
        return [a for a in self.announcements
                if a.online and a.end <= self.num_blocks
                and (include_banned or self.banned_until.get(a.peer_id, 0.0) <= now)]

    def expected_latency(self, ann: NodeAnnouncement) -> float:
        return self.rtt.get(ann.peer_id, DEFAULT_RTT_S) + 1.0 / max(ann.throughput, 1e-3)

    async def route(self, start: int = 0, end: int | None = None) -> list[NodeAnnouncement]:
        """Fastest chain tiling [start, end); refreshes announcements when stale or stuck."""
        end = self.num_blocks if end is None else end
        if time.monotonic() - self.fetched_at > self.refresh_s:
            await self.refresh()
        chain = self._shortest_chain(start, end)
        if chain is None:
            await self.refresh()
            chain = self._shortest_chain(start, end)
        if chain is None:
            # Last resort: a banned node that still announces itself online beats no route at
            # all (a transient failure, e.g. an empty stream, must not strand the client).
            chain = self._shortest_chain(start, end, include_banned=True)
            if chain is not None:
                logger.warning("no route without banned nodes for blocks %d:%d; retrying %s", start, end,
                               ", ".join(a.peer_id[-8:] for a in chain))
                return chain
            spans = sorted((a.start, a.end) for a in self.usable())
            raise NoRouteError(f"no chain of available nodes covers blocks {start}:{end} (available spans: {spans})")
        return chain

    def _shortest_chain(self, start: int, end: int, include_banned: bool = False) -> list[NodeAnnouncement] | None:
        best: dict[int, tuple[float, list[NodeAnnouncement]]] = {start: (0.0, [])}
        candidates = sorted((a for a in self.usable(include_banned) if start <= a.start and a.end <= end),
                            key=lambda a: a.start)
        for ann in candidates:  # spans sorted by start: every predecessor boundary is final
            if ann.start not in best:
                continue
            cost, chain = best[ann.start]
            new_cost = cost + self.expected_latency(ann)
            if ann.end not in best or new_cost < best[ann.end][0]:
                best[ann.end] = (new_cost, [*chain, ann])
        return best[end][1] if end in best else None
