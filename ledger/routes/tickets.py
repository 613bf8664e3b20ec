"""Clients escrow credits for a ledger-signed priority ticket."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, HTTPException
from starlette.concurrency import run_in_threadpool

from ledger.models import Ticket
from ledger.routes.deps import ContextDep, KeyPath, SessionDep, SignerDep
from ledger.schemas import TicketRequest
from ledger.tickets import TicketError, issue_ticket

router = APIRouter(prefix="/v1/tickets", tags=["tickets"])


@router.post("", summary="Escrow `cap` credits and get a SignedTicket (signed by the client)")
async def post_ticket(req: TicketRequest, ctx: ContextDep, signer: SignerDep) -> dict[str, Any]:
    """Returns SignedTicket.to_json(): {"ticket": {...}, "signature": hex}."""
    node = bytes.fromhex(req.node_key) if req.node_key else None
    try:
        signed = await run_in_threadpool(issue_ticket, ctx, signer, req.cap, req.ttl_s, node)
    except TicketError as exc:
        raise HTTPException(409 if "insufficient" in str(exc) else 422, str(exc)) from None
    return signed.to_json()


@router.get("/{ticket_id}", summary="A ticket's cap, spending and status")
def get_ticket(ticket_id: KeyPath, session: SessionDep) -> dict[str, Any]:
    t = session.get(Ticket, ticket_id)
    if t is None:
        raise HTTPException(404, "unknown ticket")
    return {"id": t.id, "client_key": t.client_key, "node_key": t.node_key or None, "cap": t.cap,
            "expiry_ms": t.expiry_ms, "spent": t.spent, "refunded": t.refunded, "status": t.status,
            "remaining": t.cap - t.spent - t.refunded, "signed": json.loads(t.body)}
