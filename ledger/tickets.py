"""Priority tickets: escrow a client's credits and sign a ticket nodes can check offline.

Issuing moves `cap` from the client to the `escrow` system account in the same
transaction that stores the ticket, so a ticket is never backed by credits the client
does not have. Spending (escrow → node) and refunds (escrow → client) happen at epoch
close (epochs.py), never past the cap and never for receipts stamped after expiry.
"""

from __future__ import annotations

import json
import os

from sqlalchemy import func, select
from sqlmodel import Session, col

from ledger.clock import now_ms
from ledger.context import LedgerContext
from ledger.db import insert_ignore, is_postgres, session_scope
from ledger.journal import MAX_AMOUNT, balance, transfer
from ledger.models import Account
from ledger.models import Ticket as TicketRow
from protocol.tickets import ANY_NODE, SignedTicket, Ticket


class TicketError(ValueError):
    """A ticket request the ledger refuses (reason for the client)."""


def issue_ticket(ctx: LedgerContext, client_key: bytes, cap: int, ttl_s: int, node_key: bytes | None) -> SignedTicket:
    if not 0 < cap < MAX_AMOUNT:
        raise TicketError("cap must be a positive number of credits")
    if not 0 < ttl_s <= ctx.settings.max_ticket_ttl_s:
        raise TicketError(f"ttl_s must be between 1 and {ctx.settings.max_ticket_ttl_s}")
    client = client_key.hex()
    with session_scope(ctx.engine) as session:
        insert_ignore(session, Account, [{"key": client, "created_ms": now_ms(), "role": "", "stake": 0,
                                          "cumulative": 0}], "key")
        if is_postgres(ctx.engine):  # serialize spends of one account
            session.execute(select(col(Account.key)).where(col(Account.key) == client).with_for_update())  # type: ignore[arg-type]
        available = balance(session, client)
        if available < cap:
            raise TicketError(f"insufficient credits: balance {available}, cap {cap}")
        ticket = Ticket(
            ticket_id=os.urandom(32), client_key=client_key, node_key=node_key or ANY_NODE, cap=cap,
            expiry_ms=now_ms() + ttl_s * 1000, ledger_key=ctx.identity.public_key,
        )
        signed = ticket.sign(ctx.identity)
        tid = ticket.ticket_id.hex()
        session.add(TicketRow(
            id=tid, client_key=client, node_key=node_key.hex() if node_key else "", cap=cap,
            expiry_ms=ticket.expiry_ms, created_ms=now_ms(), body=json.dumps(signed.to_json()),
        ))
        transfer(session, client, "escrow", cap, "escrow", ref=f"ticket:{tid}")
    return signed


def escrow_of(session: Session, client_key: str) -> int:
    """Credits of `client_key` still locked in its tickets."""
    total = session.execute(
        select(func.coalesce(func.sum(col(TicketRow.cap) - col(TicketRow.spent) - col(TicketRow.refunded)), 0))
        .where(col(TicketRow.client_key) == client_key)
    ).scalar_one()
    return int(total)
