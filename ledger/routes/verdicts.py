"""Verifiers post signed verdicts; anyone reads them."""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Body, HTTPException, Query
from sqlalchemy import select
from sqlmodel import col
from starlette.concurrency import run_in_threadpool

from ledger.audit import verifier_stats
from ledger.models import Verdict, VerdictEvidence
from ledger.routes.deps import ContextDep, KeyPath, SessionDep, SignerDep
from ledger.schemas import PostedVerdict, VerdictDetail, VerdictPublic, VerifierStats
from ledger.verdicts import VerdictError, record_verdict

router = APIRouter(tags=["verdicts"])


@router.post("/v1/verdicts", response_model=PostedVerdict, summary="Post a SignedVerdict (verifier role)")
async def post_verdict(
    ctx: ContextDep, signer: SignerDep,
    body: Annotated[dict[str, Any], Body(description="SignedVerdict.to_json()")],
) -> dict:
    try:
        vid, new = await run_in_threadpool(record_verdict, ctx, signer, body)
    except VerdictError as exc:
        raise HTTPException(exc.status, str(exc)) from None
    return {"id": vid, "new": new}


def _public(v: Verdict) -> dict:
    return {k: getattr(v, k) for k in VerdictPublic.model_fields}


@router.get("/v1/verdicts", response_model=list[VerdictPublic], summary="List verdicts, newest first")
def list_verdicts(
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100, offset: Annotated[int, Query(ge=0, le=10**9)] = 0,
    verifier: Annotated[str | None, Query(pattern=r"^[0-9a-f]{64}$")] = None,
    receipt: Annotated[str | None, Query(pattern=r"^[0-9a-f]{64}$")] = None,
    result: Annotated[int | None, Query(ge=1, le=3, description="1 pass, 2 fail, 3 unreachable")] = None,
    reason: Annotated[int | None, Query(ge=0, le=255)] = None,
) -> list[dict]:
    q = select(Verdict)
    if verifier:
        q = q.where(col(Verdict.verifier_key) == verifier)
    if receipt:
        q = q.where(col(Verdict.receipt_id) == receipt)
    if result is not None:
        q = q.where(col(Verdict.result) == result)
    if reason is not None:
        q = q.where(col(Verdict.reason) == reason)
    rows = session.execute(q.order_by(col(Verdict.ingested_ms).desc(), col(Verdict.id)).limit(limit).offset(offset)).scalars()  # type: ignore[attr-defined]
    return [_public(v) for v in rows]


@router.get("/v1/verdicts/{verdict_id}", response_model=VerdictDetail, summary="One verdict with its signed form")
def get_verdict(verdict_id: KeyPath, session: SessionDep) -> dict:
    v = session.get(Verdict, verdict_id)
    if v is None:
        raise HTTPException(404, "unknown verdict")
    stored = session.get(VerdictEvidence, verdict_id)
    return {**_public(v), "signed": json.loads(v.body), "evidence": stored.evidence if stored else None}


@router.get("/v1/verifiers", response_model=list[VerifierStats], summary="Checks and detections per verifier")
def list_verifiers(session: SessionDep) -> list[VerifierStats]:
    return verifier_stats(session)
