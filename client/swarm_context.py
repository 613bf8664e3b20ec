"""Everything a distributed model needs to reach its blocks: connection, router, identity."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from client.remote_calls import NodeFailure
from client.routing import Router
from client.swarm_connection import SwarmConnection
from protocol.dht_keys import NodeAnnouncement
from protocol.messages import RequestMeta

DEFAULT_RECEIPT_BATCH = 4
"""Inference receipts a node may hold back and send together (protocol/messages.py,
`receipt_batch`): 4 roughly halves what receipts cost a node per token, and the client
still checks each one, at most 4 steps after its result (benchmarks/receipts.py)."""


@dataclass
class SwarmContext:
    conn: SwarmConnection
    router: Router
    manifest_hash: bytes
    num_blocks: int
    client_key: bytes = b""
    receipts: Any = None  # client.receipt_book.ReceiptBook when the client has an identity
    spending: Any = None  # client.spending.SpendingPolicyBase: tickets to attach (None = free)
    max_attempts: int = 5
    receipt_batch: int = DEFAULT_RECEIPT_BATCH

    def meta(self, ann: NodeAnnouncement, session_id: bytes, step: int, request_ref: bytes = b"") -> RequestMeta:
        ticket, bid = b"", 0
        if self.spending is not None:
            offer = self.spending.offer()
            ticket, bid = offer.ticket, offer.bid_per_token
        return RequestMeta(model=self.manifest_hash, start=ann.start, end=ann.end, client_key=self.client_key,
                           request_ref=request_ref, session_id=session_id, step=step, ticket=ticket, priority=bid)

    def observe(self, meta: RequestMeta, response: Any) -> None:
        """Let the spending policy account for what a reply's receipt charged."""
        if self.spending is not None:
            self.spending.observe_reply(meta.ticket, response.receipt)

    def fail(self, failure: NodeFailure) -> None:
        """Ban a node that failed, at once (recovery never dials it again this session)."""
        self.router.ban(failure.peer_id, failure.reason)

    def close(self) -> None:
        self.conn.close()
