"""Ledger identity and parameters, health, invariant check, activity timeline."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query

from ledger.audit import timeline
from ledger.journal import check_invariants
from ledger.routes.deps import ContextDep, SessionDep
from ledger.schemas import CheckReport, LedgerKey, TimelinePoint

router = APIRouter(tags=["ledger"])


@router.get("/v1/ledger-key", response_model=LedgerKey, summary="The key that signs tickets, and pricing")
def ledger_key(ctx: ContextDep) -> LedgerKey:
    s = ctx.settings
    return LedgerKey(
        ledger_key=ctx.identity.public_hex,
        price_unit=f"1 credit = {s.flops_per_credit} block-FLOPs (block_flops_per_token x tokens x blocks)",
        flops_per_credit=s.flops_per_credit, grace_period_s=s.grace_period_s, slash_multiple=s.slash_multiple,
        sample_rate=s.sample_rate, epoch_minutes=s.epoch_minutes,
    )


@router.get("/v1/chain", summary="The contract deployment this ledger anchors epochs to")
def chain(ctx: ContextDep) -> dict[str, Any]:
    path = ctx.settings.chain_addresses_file
    if not ctx.settings.chain_rpc or not path:
        raise HTTPException(404, "this ledger has no chain configured")
    try:
        deployment: dict[str, Any] = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        raise HTTPException(503, "the ledger's contract addresses file is unreadable") from None
    return deployment


@router.get("/v1/health", summary="Liveness")
def health() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/v1/check", response_model=CheckReport, summary="Journal invariants (what `corolla ledger check` runs)")
def check(session: SessionDep) -> CheckReport:
    r = check_invariants(session)
    return CheckReport(ok=r.ok, minted=r.minted, burned=r.burned, held=r.held, escrow=r.escrow, slashed=r.slashed,
                       accounts=r.accounts, entries=r.entries, problems=r.problems)


@router.get("/v1/timeline", response_model=list[TimelinePoint], summary="Verified work and failures over time")
def get_timeline(
    session: SessionDep, bucket_s: Annotated[int, Query(ge=1, le=30 * 86400)] = 60,
) -> list[TimelinePoint]:
    return timeline(session, bucket_s * 1000)
