"""Model manifests: receipts must name a model the ledger knows, which also prices the work."""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Body, HTTPException
from sqlalchemy import select
from sqlmodel import col
from starlette.concurrency import run_in_threadpool

from ledger.models import Manifest
from ledger.receipts_ingest import store_manifest
from ledger.routes.deps import ContextDep, KeyPath, SessionDep, SignerDep
from ledger.schemas import ManifestPosted

router = APIRouter(prefix="/v1/manifests", tags=["manifests"])


@router.post("", response_model=ManifestPosted, summary="Register a ModelManifest (any signed account)")
async def post_manifest(
    ctx: ContextDep, signer: SignerDep,
    body: Annotated[dict[str, Any], Body(description="ModelManifest.to_json()")],
) -> dict[str, Any]:
    try:
        h, new = await run_in_threadpool(store_manifest, ctx, body)
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from None
    return {"manifest_hash": h, "new": new}


@router.get("", summary="Known manifests")
def list_manifests(session: SessionDep) -> list[dict[str, Any]]:
    rows = session.execute(select(Manifest).order_by(col(Manifest.created_ms))).scalars()
    return [{"manifest_hash": m.hash, "name": m.name, "num_blocks": m.num_blocks,
             "block_flops_per_token": m.block_flops_per_token} for m in rows]


@router.get("/{manifest_hash}", summary="One manifest (ModelManifest.to_json())")
def get_manifest(manifest_hash: KeyPath, session: SessionDep) -> dict[str, Any]:
    m = session.get(Manifest, manifest_hash)
    if m is None:
        raise HTTPException(404, "unknown manifest")
    return json.loads(m.body)  # type: ignore[no-any-return]
