"""Offline check of a priority ticket on the node's hot path: paid or free, and at what price.

A request may carry a ledger-signed ticket (protocol.tickets) and a bid: the credits per
token the client offers (`RequestMeta.priority`). The node honours it when the ticket is
signed by a ledger key the node trusts, has not expired, names the requesting client and
this node (or any node), and this node has not already charged the ticket up to its cap.
Anything else is served as free, with a message the node returns to the client: a bad
ticket never fails a request.

Price: the client pays max(bid, node's minimum price) per token; the charge for one
request is price × tokens, reserved against the ticket before the work is queued (so two
concurrent requests cannot both squeeze under the cap) and written into the receipt's
`price` field. A failed computation gives its charge back with `TicketSpending.refund`.

Double spending. `TicketSpending` is per node: it stops *this* node from serving past the
cap on its own word. A ticket that names a node can only be spent there; an "any node"
ticket could be presented to several nodes at once, each of which would honour it up to
the cap. The ledger is what bounds the total: it settles receipts against the ticket in
order and never moves more than `cap` credits in all (receipts beyond it settle at zero),
so a client cannot spend more than it escrowed; a node that serves an over-used any-node
ticket risks doing that work unpaid, which is why operators may prefer node-bound tickets.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field

from protocol.receipts import ZERO32
from protocol.tickets import ANY_NODE, SignedTicket

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TicketDecision:
    """How one request is served: `paid` with `charge` credits reserved, or free and why."""

    paid: bool
    price_per_token: int = 0
    charge: int = 0  # price_per_token × tokens, reserved against the ticket
    ticket_id: bytes = ZERO32  # zeros when free, as in the receipt
    message: str = ""  # empty when paid or when no ticket was offered

    @property
    def priority_price(self) -> float:
        """What the task pool weighs the request by (0 = free)."""
        return float(self.price_per_token) if self.paid else 0.0


FREE = TicketDecision(paid=False)


class TicketSpending:
    """Credits this node has charged against each ticket (thread-safe, in memory).

    Entries are kept until the ticket expires; `forget_expired` drops them. After a node
    restart, `record` re-seeds the counters from the receipts in the node's outbox.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._charged: dict[bytes, int] = {}
        self._expiry: dict[bytes, int] = {}

    def charged(self, ticket_id: bytes) -> int:
        with self._lock:
            return self._charged.get(ticket_id, 0)

    def try_charge(self, ticket_id: bytes, amount: int, cap: int, expiry_ms: int) -> int | None:
        """Reserve `amount` if it fits under `cap`; the new total, or None if it does not fit."""
        with self._lock:
            total = self._charged.get(ticket_id, 0) + amount
            if total > cap:
                return None
            self._charged[ticket_id] = total
            self._expiry[ticket_id] = expiry_ms
            return total

    def refund(self, ticket_id: bytes, amount: int) -> None:
        """Give back a reservation whose work was not delivered."""
        with self._lock:
            if ticket_id in self._charged:
                self._charged[ticket_id] = max(0, self._charged[ticket_id] - amount)

    def record(self, ticket_id: bytes, amount: int, expiry_ms: int) -> None:
        """Count an earlier charge (from the outbox) without a cap check."""
        with self._lock:
            self._charged[ticket_id] = self._charged.get(ticket_id, 0) + amount
            self._expiry[ticket_id] = max(expiry_ms, self._expiry.get(ticket_id, 0))

    def forget_expired(self, now_ms: int) -> int:
        """Drop counters of expired tickets (they can no longer be honoured); how many."""
        with self._lock:
            gone = [tid for tid, exp in self._expiry.items() if exp <= now_ms]
            for tid in gone:
                self._charged.pop(tid, None)
                self._expiry.pop(tid, None)
            return len(gone)


_REASONS = {
    "forged": "ticket is not signed by a ledger this node trusts",
    "expired": "ticket has expired",
    "wrong client": "ticket was issued to another client",
    "wrong node": "ticket is bound to another node",
}


def check_ticket(
    ticket: bytes,
    *,
    trusted_ledger_keys: Collection[bytes],
    client_key: bytes,
    node_key: bytes,
    now_ms: int,
    tokens: int,
    spending: TicketSpending,
    bid_per_token: int = 0,
    min_price_per_token: int = 1,
) -> TicketDecision:
    """Decide paid or free for one request and reserve its charge; never raises on bad input."""
    if not ticket:
        return FREE
    try:
        signed = SignedTicket.from_bytes(ticket)
    except ValueError:
        return _free("ticket is malformed")
    t = signed.ticket
    if t.ledger_key not in trusted_ledger_keys:
        return _free(_REASONS["forged"])
    reason = signed.check_for(client_key, node_key, now_ms, ledger_key=t.ledger_key)
    if reason is not None:
        return _free(_REASONS.get(reason, reason))
    price = max(int(bid_per_token), int(min_price_per_token), 1)
    charge = price * max(int(tokens), 1)
    total = spending.try_charge(t.ticket_id, charge, t.cap, t.expiry_ms)
    if total is None:
        already = spending.charged(t.ticket_id)
        return _free(
            f"ticket exhausted on this node: {already} of its cap {t.cap} credits charged, "
            f"this request needs {charge} ({tokens} tokens at {price}/token)"
        )
    return TicketDecision(paid=True, price_per_token=price, charge=charge, ticket_id=t.ticket_id)


def _free(reason: str) -> TicketDecision:
    return TicketDecision(paid=False, message=f"{reason}; served as free")


def is_any_node(signed: SignedTicket) -> bool:
    """True for tickets every node may honour (the double-spend case the ledger bounds)."""
    return signed.ticket.node_key == ANY_NODE


def _wall_clock_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class TicketGate:
    """A node's ticket policy in one object: its key, the ledgers it trusts, its price.

    The block server calls `decide` once per request (per step for inference) before
    queueing the work, gives the charge back with `refund` if the work fails, and puts
    `decision.ticket_id` / `decision.charge` into the receipt.
    """

    node_key: bytes
    trusted_ledger_keys: frozenset[bytes]
    min_price_per_token: int = 1
    spending: TicketSpending = field(default_factory=TicketSpending)
    clock_ms: Callable[[], int] = _wall_clock_ms
    paid: int = 0
    refused: int = 0

    def decide(self, ticket: bytes, client_key: bytes, tokens: int, bid_per_token: int = 0) -> TicketDecision:
        decision = check_ticket(
            ticket, trusted_ledger_keys=self.trusted_ledger_keys, client_key=client_key,
            node_key=self.node_key, now_ms=self.clock_ms(), tokens=tokens, spending=self.spending,
            bid_per_token=bid_per_token, min_price_per_token=self.min_price_per_token,
        )
        if decision.paid:
            self.paid += 1
        elif decision.message:
            self.refused += 1
            logger.info("ticket from client %s refused: %s", client_key.hex()[:8], decision.message)
        return decision

    def refund(self, decision: TicketDecision) -> None:
        if decision.paid:
            self.spending.refund(decision.ticket_id, decision.charge)

    def trust(self, ledger_key: bytes) -> None:
        """Also honour tickets signed by `ledger_key` (e.g. fetched once the ledger is up)."""
        self.trusted_ledger_keys = self.trusted_ledger_keys | {ledger_key}


def fetch_ledger_key(ledger_url: str, timeout_s: float = 5.0) -> bytes | None:
    """The ledger's ticket-signing key from `GET /v1/ledger-key`, or None if unreachable.

    Fetched once at start-up over the operator-configured URL: trusting it is the same
    trust the node already places in the ledger that pays it.
    """
    import httpx

    try:
        resp = httpx.get(ledger_url.rstrip("/") + "/v1/ledger-key", timeout=timeout_s)
        resp.raise_for_status()
        key = bytes.fromhex(resp.json()["ledger_key"])
    except (httpx.HTTPError, httpx.InvalidURL, ValueError, KeyError, TypeError) as exc:
        logger.warning("could not fetch the ledger key from %s (%s); tickets are not honoured yet", ledger_url, exc)
        return None
    return key if len(key) == 32 else None
