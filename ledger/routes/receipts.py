"""POST receipts from nodes; read receipts; the verifier's queue of receipts due for checking."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query
from sqlalchemy import select
from sqlmodel import col
from starlette.concurrency import run_in_threadpool

from ledger.models import Receipt, Verdict
from ledger.receipts_ingest import ingest
from ledger.routes.deps import ContextDep, KeyPath, SessionDep, SignerDep
from ledger.schemas import DueReceipt, IngestResponse, ReceiptBatch, ReceiptDetail, ReceiptPublic
from protocol.receipts import SignedReceipt

router = APIRouter(prefix="/v1/receipts", tags=["receipts"])

Limit = Annotated[int, Query(ge=1, le=1000)]
Offset = Annotated[int, Query(ge=0, le=10**9)]


@router.post("", response_model=IngestResponse, summary="Submit a batch of signed receipts")
async def post_receipts(batch: ReceiptBatch, ctx: ContextDep, signer: SignerDep) -> dict:
    """Each receipt is checked and stored once; duplicates are acknowledged, bad ones rejected
    one by one with a reason. Signed by any account (usually the node)."""
    if len(batch.receipts) > ctx.settings.max_batch:
        raise HTTPException(413, f"at most {ctx.settings.max_batch} receipts per request")
    result = await run_in_threadpool(ingest, ctx, batch.receipts)
    return result.to_json()


def _public(r: Receipt) -> dict:
    return {k: getattr(r, k) for k in ReceiptPublic.model_fields}


@router.get("", response_model=list[ReceiptPublic], summary="List receipts, newest first, with filters")
def list_receipts(
    session: SessionDep, limit: Limit = 100, offset: Offset = 0,
    node: Annotated[str | None, Query(pattern=r"^[0-9a-f]{64}$")] = None,
    client: Annotated[str | None, Query(pattern=r"^[0-9a-f]{64}$")] = None,
    status: Annotated[str | None, Query(pattern=r"^(pending|paid|failed|withheld)$")] = None,
    verdict: Annotated[int | None, Query(ge=0, le=3, description="0 none, 1 pass, 2 fail, 3 unreachable")] = None,
    epoch: Annotated[int | None, Query(ge=0, le=2**31)] = None,
) -> list[dict]:
    q = select(Receipt)
    if node:
        q = q.where(col(Receipt.node_key) == node)
    if client:
        q = q.where(col(Receipt.client_key) == client)
    if status:
        q = q.where(col(Receipt.status) == status)
    if verdict is not None:
        q = q.where(col(Receipt.verdict_result) == verdict)
    if epoch is not None:
        q = q.where(col(Receipt.epoch) == epoch)
    rows = session.execute(q.order_by(col(Receipt.ingested_ms).desc(), col(Receipt.id)).limit(limit).offset(offset)).scalars()  # type: ignore[attr-defined]
    return [_public(r) for r in rows]


@router.get("/due", response_model=list[DueReceipt], summary="Receipts waiting for a verdict (verifier queue)")
def due_receipts(
    session: SessionDep, ctx: ContextDep, limit: Limit = 100,
    rate: Annotated[float | None, Query(ge=0, le=1, description="sampling rate; default: server's")] = None,
    node: Annotated[str | None, Query(pattern=r"^[0-9a-f]{64}$")] = None,
    include_paid: Annotated[bool, Query(description="also paid receipts never checked (a fail still slashes)")] = False,
) -> list[dict]:
    """Unchecked, unsettled receipts whose sample draw is below the sampling rate, oldest first,
    with the node's record so the verifier can favour new nodes and high values."""
    from ledger.audit import node_info

    rate = ctx.settings.sample_rate if rate is None else rate
    statuses = ("pending", "paid") if include_paid else ("pending",)
    q = select(Receipt).where(col(Receipt.verdict_result) == 0, col(Receipt.status).in_(statuses),
                              col(Receipt.sample_draw) < rate)
    if node:
        q = q.where(col(Receipt.node_key) == node)
    rows = session.execute(q.order_by(col(Receipt.ingested_ms), col(Receipt.id)).limit(limit)).scalars().all()  # type: ignore[arg-type]
    infos: dict[str, dict] = {}
    out = []
    for r in rows:
        if r.node_key not in infos:
            infos[r.node_key] = node_info(session, r.node_key).model_dump()
        out.append({
            "id": r.id, "node_key": r.node_key, "client_key": r.client_key, "model": r.model,
            "block_start": r.block_start, "block_end": r.block_end, "kind": r.kind, "tokens": r.tokens,
            "value": r.value, "timestamp_ms": r.timestamp_ms, "ingested_ms": r.ingested_ms,
            "sample_draw": r.sample_draw, "signed": SignedReceipt.from_bytes(r.raw).to_json(),
            "node": infos[r.node_key],
        })
    return out


@router.get("/{receipt_id}", response_model=ReceiptDetail, summary="One receipt with its status and verdicts")
def get_receipt(receipt_id: KeyPath, session: SessionDep) -> dict:
    r = session.get(Receipt, receipt_id)
    if r is None:
        raise HTTPException(404, "unknown receipt")
    verdicts = session.execute(select(col(Verdict.id)).where(col(Verdict.receipt_id) == receipt_id)).scalars().all()
    return {**_public(r), "signed": SignedReceipt.from_bytes(r.raw).to_json(), "verdicts": list(verdicts)}
