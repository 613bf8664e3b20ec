"""Epochs with their balance roots and anchors; Merkle proofs for on-chain claims."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Query
from sqlalchemy import select
from sqlmodel import col

from ledger.epochs import epoch_proof
from ledger.models import Epoch
from ledger.routes.deps import AddressPath, ContextDep, SessionDep, SignerDep
from ledger.schemas import EpochProof, EpochPublic

router = APIRouter(prefix="/v1/epochs", tags=["epochs"])

EpochRef = Annotated[str, Path(pattern=r"^(latest|[0-9]{1,9})$", description="epoch number or `latest`")]


def _number(session: SessionDep, ref: str) -> int:
    if ref != "latest":
        return int(ref)
    n = session.execute(select(col(Epoch.number)).order_by(col(Epoch.number).desc()).limit(1)).scalar()  # type: ignore[attr-defined]
    if n is None:
        raise HTTPException(404, "no epoch closed yet")
    return int(n)


@router.get("", response_model=list[EpochPublic], summary="Closed epochs, newest first")
def list_epochs(
    session: SessionDep, limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=10**9)] = 0,
) -> list[Epoch]:
    return list(session.execute(
        select(Epoch).order_by(col(Epoch.number).desc()).limit(limit).offset(offset)  # type: ignore[attr-defined]
    ).scalars())


@router.get("/latest/proof/{evm_address}", response_model=EpochProof,
            summary="Merkle proof of an address's cumulative balance in the latest epoch with a root")
def latest_proof(evm_address: AddressPath, session: SessionDep) -> dict:
    proof = epoch_proof(session, evm_address)
    if proof is None:
        raise HTTPException(404, "no epoch root contains this address (bind it first: POST /v1/accounts/bind)")
    return proof


@router.get("/{ref}/proof/{evm_address}", response_model=EpochProof, summary="Merkle proof in a given epoch")
def proof_in(ref: EpochRef, evm_address: AddressPath, session: SessionDep) -> dict:
    proof = epoch_proof(session, evm_address, None if ref == "latest" else _number(session, ref))
    if proof is None:
        raise HTTPException(404, "this epoch's root does not contain this address")
    return proof


@router.get("/{ref}", response_model=EpochPublic, summary="One epoch (number or `latest`)")
def get_epoch(ref: EpochRef, session: SessionDep) -> Epoch:
    epoch = session.get(Epoch, _number(session, ref))
    if epoch is None:
        raise HTTPException(404, "unknown epoch")
    return epoch


@router.post("/close", response_model=EpochPublic, summary="Close an epoch now (admin keys only)")
async def close_now(ctx: ContextDep, signer: SignerDep) -> Epoch:
    """The scheduler closes epochs every `epoch_minutes`; admins (and tests, demos) may force one."""
    from starlette.concurrency import run_in_threadpool

    from ledger.db import session_scope
    from ledger.epochs import EpochBusy, close_epoch
    from ledger.models import Account

    with session_scope(ctx.engine) as session:
        me = session.get(Account, signer.hex())
        is_admin = signer in ctx.settings.admin_key_bytes or (me is not None and me.role == "admin")
    if not is_admin:
        raise HTTPException(403, "only admin keys close epochs on demand")
    try:
        summary = await run_in_threadpool(close_epoch, ctx)
    except EpochBusy as exc:
        raise HTTPException(409, str(exc)) from None
    with session_scope(ctx.engine) as session:
        epoch = session.get(Epoch, summary.number)
    assert epoch is not None
    return epoch
