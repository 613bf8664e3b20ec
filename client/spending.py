"""How a client spends credits for priority: escrow tickets, attach them, track what was spent.

`SpendingPolicyBase` is the seam the client's sessions call; it and its alias
`FreePolicy` never pay. `SpendingPolicy(ledger_url, identity, budget)`:

- escrows credits with the ledger (`POST /v1/tickets`, signed with protocol.request_auth)
  in tickets of at most `ticket_cap` credits, "any node" by default so one ticket covers a
  whole chain of nodes (the ledger settles at most the cap across all of them);
- hands the current ticket and bid to every request (`offer()`);
- tracks spending from the `price` field of receipts that carry its ticket id
  (`record_receipt`), renews the ticket when it is nearly used up, close to expiry, or a
  node reported it exhausted, and never commits more than `budget` in total;
- falls back to free (an empty offer) once the budget is used or the ledger refuses,
  logging one line why; a ledger outage never fails generation.

Routing: `node_cost` is the expected seconds per token a route planner should weigh a node
by. A paying client's work jumps each node's queue, so for it a node's queue is irrelevant
and only raw speed counts; a free client also pays for the queue in front of it.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from protocol.identity import Identity
from protocol.receipts import Receipt, SignedReceipt
from protocol.request_auth import sign_request
from protocol.tickets import SignedTicket

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TicketOffer:
    """What goes into a request's metadata: the signed ticket bytes and the bid per token."""

    ticket: bytes = b""
    bid_per_token: int = 0

    @property
    def paying(self) -> bool:
        return bool(self.ticket)


NO_OFFER = TicketOffer()


@dataclass(frozen=True)
class SpendEvent:
    """One paid step as the client saw it (for `corolla wallet`-style summaries and tests)."""

    ticket_id: bytes
    node_key: bytes
    tokens: int
    price: int


class SpendingPolicyBase:
    """What a client session asks before and after each request; by itself it never pays."""

    def offer(self) -> TicketOffer:
        """The ticket and bid to attach to the next request (empty = free)."""
        return NO_OFFER

    def record_receipt(self, receipt: Receipt) -> None:
        """Account for a receipt the client accepted (its `price` was charged to us)."""

    def on_ticket_refused(self, ticket: bytes, message: str) -> None:
        """A node served us free despite the ticket; `message` says why."""

    def observe(self, offered: TicketOffer, receipt: Receipt | None) -> None:
        """After each call: count what its receipt charged. A receipt without the ticket we
        attached means the node served us free (ticket exhausted, expired or refused)."""
        if receipt is None:
            return
        if offered.paying and receipt.ticket_id == bytes(32):
            self.on_ticket_refused(offered.ticket, "a node's receipt carries no ticket: served free")
        else:
            self.record_receipt(receipt)

    def observe_reply(self, sent_ticket: bytes, signed_receipt: Any) -> None:
        """`observe` for a node's reply as it arrives: the ticket bytes that went out in the
        request metadata and the reply's signed receipt, as bytes or JSON (None/empty when
        the node signs none)."""
        if not signed_receipt:
            return
        try:
            if isinstance(signed_receipt, (bytes, bytearray, memoryview)):
                receipt = SignedReceipt.from_bytes(bytes(signed_receipt)).receipt
            else:
                receipt = SignedReceipt.from_json(signed_receipt).receipt
        except (ValueError, TypeError, AttributeError):
            return  # the client's receipt check reports malformed receipts
        self.observe(TicketOffer(sent_ticket, 0), receipt)

    def node_cost(self, throughput_tokens_per_s: float, queued_tasks: float = 0.0, rtt_s: float = 0.0) -> float:
        """Expected seconds per token through a node: round trip + queue + compute."""
        per_token = 1.0 / max(throughput_tokens_per_s, 1e-9)
        return rtt_s + per_token * (1.0 + max(queued_tasks, 0.0))

    @property
    def paying(self) -> bool:
        return False

    def close(self) -> None:
        """Nothing to release: unspent escrow returns to the client when its ticket expires."""


class FreePolicy(SpendingPolicyBase):
    """Never pays: the default for clients without a ledger."""


class LedgerRefused(RuntimeError):
    """The ledger would not issue a ticket (insufficient credits, bad request)."""


class SpendingPolicy(SpendingPolicyBase):
    """Pays for priority out of `budget` credits, one escrowed ticket at a time (thread-safe)."""

    def __init__(
        self,
        ledger_url: str,
        identity: Identity,
        budget: int,
        *,
        ticket_cap: int | None = None,
        ttl_s: int = 600,
        bid_per_token: int = 0,
        node_key: bytes | None = None,
        renew_before_s: float = 30.0,
        renew_below: int = 0,
        retry_after_s: float = 10.0,
        http: httpx.Client | None = None,
        clock: Callable[[], float] = time.time,
    ):
        if budget < 0:
            raise ValueError("budget must be >= 0 credits")
        self.ledger_url = ledger_url.rstrip("/")
        self.identity = identity
        self.budget = int(budget)
        self.ticket_cap = int(ticket_cap or budget)
        self.ttl_s = int(ttl_s)
        self.bid_per_token = int(bid_per_token)
        self.node_key = node_key
        self.renew_before_s = renew_before_s
        self.renew_below = int(renew_below)
        self.retry_after_s = retry_after_s
        self._http = http or httpx.Client(timeout=10.0)
        self._own_http = http is None
        self._clock = clock
        self._lock = threading.RLock()
        self._ticket: SignedTicket | None = None
        self._ticket_bytes = b""
        self._spent_on: dict[bytes, int] = {}  # ticket id -> credits seen in receipts
        self._seen: set[bytes] = set()  # receipt ids already counted
        self.history: list[SpendEvent] = []
        self.last_error = ""
        self._retry_at = 0.0
        self._ledger_key: bytes | None = None

    # ----- what sessions call ------------------------------------------------------------

    @property
    def spent(self) -> int:
        """Credits charged to us according to the receipts we accepted."""
        with self._lock:
            return sum(self._spent_on.values())

    @property
    def remaining(self) -> int:
        return max(0, self.budget - self.spent)

    @property
    def paying(self) -> bool:
        return self.offer().paying

    @property
    def ticket(self) -> SignedTicket | None:
        with self._lock:
            return self._ticket

    def offer(self) -> TicketOffer:
        with self._lock:
            if self._needs_renewal():
                self._renew()
            if self._ticket is None:
                return NO_OFFER
            return TicketOffer(self._ticket_bytes, self.bid_per_token)

    def record_receipt(self, receipt: Receipt) -> None:
        if not receipt.price or receipt.ticket_id == bytes(32):
            return
        with self._lock:
            if receipt.ticket_id not in self._spent_on or receipt.receipt_id in self._seen:
                return  # not one of our tickets, or counted already
            self._seen.add(receipt.receipt_id)
            self._spent_on[receipt.ticket_id] += receipt.price
            self.history.append(SpendEvent(receipt.ticket_id, receipt.node_key, receipt.tokens, receipt.price))

    def on_ticket_refused(self, ticket: bytes, message: str) -> None:
        """Renew a ticket that nodes honoured before and now refuse (used up on their side or
        expired); one never honoured is kept: the node may simply not take tickets."""
        with self._lock:
            t = self._ticket
            if t is None or ticket != self._ticket_bytes or self._spent_on.get(t.id, 0) == 0:
                return
            logger.warning("a node served us free (%s); renewing the ticket", message)
            self._retire_current()

    def node_cost(self, throughput_tokens_per_s: float, queued_tasks: float = 0.0, rtt_s: float = 0.0) -> float:
        if self.paying:
            return rtt_s + 1.0 / max(throughput_tokens_per_s, 1e-9)
        return super().node_cost(throughput_tokens_per_s, queued_tasks, rtt_s)

    def close(self) -> None:
        if self._own_http:
            self._http.close()

    # ----- tickets -----------------------------------------------------------------------

    def _needs_renewal(self) -> bool:
        t = self._ticket
        if t is None:
            return True
        left = t.ticket.cap - self._spent_on.get(t.id, 0)
        expires_in = t.ticket.expiry_ms / 1000 - self._clock()
        if left <= self.renew_below or expires_in <= self.renew_before_s:
            self._retire_current()
            return True
        return False

    def _retire_current(self) -> None:
        """Stop attaching the current ticket; from now on it counts at what it spent."""
        self._ticket, self._ticket_bytes = None, b""

    def committed(self) -> int:
        """Credits the budget is bound for: spent on retired tickets + the current cap."""
        with self._lock:
            current = self._ticket
            total = sum(spent for tid, spent in self._spent_on.items() if current is None or tid != current.id)
            if current is not None:
                total += max(current.ticket.cap, self._spent_on.get(current.id, 0))
            return total

    def _renew(self) -> None:
        cap = min(self.ticket_cap, self.budget - self.committed())
        if cap <= 0:
            if self.last_error != "budget used":
                self.last_error = "budget used"
                logger.info("spending budget of %d credits used; requests are now free", self.budget)
            return
        if self._clock() < self._retry_at:
            return
        try:
            signed = self._request_ticket(cap)
        except (httpx.HTTPError, LedgerRefused, ValueError) as exc:
            self.last_error = str(exc) or type(exc).__name__
            self._retry_at = self._clock() + self.retry_after_s
            logger.warning("ledger gave no ticket (%s); requests are free for now", self.last_error)
            return
        self._ticket, self._ticket_bytes = signed, signed.to_bytes()
        self._spent_on.setdefault(signed.id, 0)
        self.last_error = ""

    def _request_ticket(self, cap: int) -> SignedTicket:
        body_obj: dict[str, object] = {"cap": cap, "ttl_s": self.ttl_s}
        if self.node_key is not None:
            body_obj["node_key"] = self.node_key.hex()
        body = json.dumps(body_obj).encode()
        path = "/v1/tickets"
        headers = sign_request(self.identity, "POST", path, body)
        headers["Content-Type"] = "application/json"
        resp = self._http.post(self.ledger_url + path, content=body, headers=headers)
        if resp.status_code >= 400:
            raise LedgerRefused(f"ledger refused a ticket of {cap} credits: {_detail(resp)}")
        signed = SignedTicket.from_json(resp.json())
        ledger_key = self.ledger_key()
        if not signed.verify(ledger_key):
            raise ValueError("ledger returned a ticket that its own key does not verify")
        if signed.ticket.client_key != self.identity.public_key or signed.ticket.cap != cap:
            raise ValueError("ledger returned a ticket for another client or amount")
        return signed

    def ledger_key(self) -> bytes:
        """The ledger's public key (`GET /v1/ledger-key`), fetched once."""
        if self._ledger_key is None:
            resp = self._http.get(self.ledger_url + "/v1/ledger-key")
            resp.raise_for_status()
            data = resp.json()
            key_hex = data["key"] if isinstance(data, dict) and "key" in data else data.get("ledger_key", "")
            key = bytes.fromhex(key_hex)
            if len(key) != 32:
                raise ValueError("ledger key is not 32 bytes")
            self._ledger_key = key
        return self._ledger_key


def _detail(resp: httpx.Response) -> str:
    try:
        data = resp.json()
        if isinstance(data, dict) and "detail" in data:
            return str(data["detail"])
    except ValueError:
        pass
    return f"HTTP {resp.status_code}"
