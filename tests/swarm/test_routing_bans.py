"""Routing around banned nodes, and the last resort when a span has no other server."""

import asyncio

import pytest

from client.routing import NoRouteError, Router
from protocol.dht_keys import NodeAnnouncement


def announce(peer: str, start: int, end: int, throughput: float = 100.0) -> NodeAnnouncement:
    return NodeAnnouncement(peer_id=peer, start=start, end=end, throughput=throughput, forward_tps=1000.0,
                            state="online", node_key="", maddrs=[], dtype="float32")


def router_over(anns: list[NodeAnnouncement]) -> Router:
    async def fetch() -> list[NodeAnnouncement]:
        return list(anns)

    return Router(fetch, 4)


def test_banned_node_is_routed_around_when_another_covers_its_span():
    router = router_over([announce("a", 0, 2), announce("b", 2, 4), announce("c", 2, 4, throughput=50.0)])
    assert [a.peer_id for a in asyncio.run(router.route())] == ["a", "b"]
    router.ban("b", "test")
    assert [a.peer_id for a in asyncio.run(router.route())] == ["a", "c"]


def test_only_server_of_a_span_is_retried_after_a_transient_failure():
    router = router_over([announce("a", 0, 2), announce("b", 2, 4)])
    router.ban("b", "stream closed before the reply")
    assert [a.peer_id for a in asyncio.run(router.route())] == ["a", "b"]


def test_offline_node_is_never_a_last_resort():
    offline = announce("b", 2, 4)
    offline = NodeAnnouncement(**{**offline.__dict__, "state": "offline"})
    router = router_over([announce("a", 0, 2), offline])
    with pytest.raises(NoRouteError, match="no chain of available nodes covers blocks 0:4"):
        asyncio.run(router.route())
