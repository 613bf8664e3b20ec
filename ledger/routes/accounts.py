"""Accounts: balances derived from the journal, history, EVM binding, roles."""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Body, HTTPException, Query
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlmodel import col

from ledger.audit import account_summary, list_accounts, list_nodes
from ledger.clock import now_ms
from ledger.db import session_scope
from ledger.journal import ensure_account
from ledger.models import Account, JournalEntry
from ledger.routes.deps import ContextDep, KeyPath, SessionDep, SignerDep
from ledger.schemas import AccountPublic, JournalLine, RoleGrant
from protocol.binding import Binding, verify_binding

router = APIRouter(tags=["accounts"])


@router.get("/v1/accounts", response_model=list[AccountPublic], summary="All accounts with balances")
def get_accounts(
    session: SessionDep, limit: Annotated[int, Query(ge=1, le=1000)] = 200,
    offset: Annotated[int, Query(ge=0, le=10**9)] = 0,
) -> list[AccountPublic]:
    return list_accounts(session, limit, offset)


@router.get("/v1/accounts/{key}", response_model=AccountPublic, summary="Balance, escrow and earnings of a key")
def get_account(key: KeyPath, session: SessionDep) -> AccountPublic:
    summary = account_summary(session, key)
    if summary is None:
        raise HTTPException(404, "unknown account")
    return summary


@router.get("/v1/accounts/{key}/history", response_model=list[JournalLine], summary="Journal lines of a key")
def get_history(
    key: KeyPath, session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100, offset: Annotated[int, Query(ge=0, le=10**9)] = 0,
) -> list[dict[str, Any]]:
    rows = session.execute(
        select(JournalEntry).where(col(JournalEntry.account) == key)
        .order_by(col(JournalEntry.id).desc()).limit(limit).offset(offset)  # type: ignore[union-attr]
    ).scalars()
    return [{k: getattr(e, k) for k in JournalLine.model_fields} for e in rows]


@router.get("/v1/nodes", summary="Nodes: work, pass/fail record, balance, stake")
def get_nodes(session: SessionDep) -> list[dict[str, Any]]:
    return list_nodes(session)


@router.post("/v1/accounts/bind", response_model=AccountPublic, summary="Bind the signer's key to an EVM address")
def bind(
    ctx: ContextDep, signer: SignerDep,
    body: Annotated[dict[str, Any], Body(description="protocol.binding.Binding.to_json()")],
) -> AccountPublic:
    try:
        binding = Binding.from_json(body)
    except (ValueError, TypeError, AttributeError) as exc:
        raise HTTPException(422, f"malformed binding: {exc}") from None
    if binding.ed25519_key != signer:
        raise HTTPException(403, "a key binds only itself")
    if not verify_binding(binding):
        raise HTTPException(422, "binding signatures do not verify")
    with session_scope(ctx.engine) as session:
        account = ensure_account(session, signer.hex())
        # One address per key and one key per address, for good: the balance tree pays an
        # address its cumulative amount, so moving it would let two addresses claim it.
        if account.evm_address not in (None, binding.evm_address):
            raise HTTPException(409, f"this key is already bound to {account.evm_address}")
        other = session.execute(
            select(col(Account.key)).where(col(Account.evm_address) == binding.evm_address,
                                           col(Account.key) != signer.hex())
        ).first()
        if other is not None:
            raise HTTPException(409, "this EVM address is already bound to another key")
        account.evm_address = binding.evm_address
        account.binding = json.dumps(binding.to_json())
        session.add(account)
        try:
            session.flush()
        except IntegrityError:  # a concurrent binding of the same address won
            raise HTTPException(409, "this EVM address is already bound to another key") from None
    with session_scope(ctx.engine) as session:
        summary = account_summary(session, signer.hex())
    assert summary is not None
    return summary


@router.post("/v1/roles", response_model=AccountPublic, summary="Grant a role (admin keys only)")
def grant_role(ctx: ContextDep, signer: SignerDep, grant: Annotated[RoleGrant, Body()]) -> AccountPublic:
    with session_scope(ctx.engine) as session:
        me = session.get(Account, signer.hex())
        if signer not in ctx.settings.admin_key_bytes and (me is None or me.role != "admin"):
            raise HTTPException(403, "only admin keys grant roles")
        account = ensure_account(session, grant.key)
        account.role = grant.role
        account.created_ms = account.created_ms or now_ms()
        session.add(account)
    with session_scope(ctx.engine) as session:
        summary = account_summary(session, grant.key)
    assert summary is not None
    return summary


@router.post("/v1/withdrawals", response_model=AccountPublic,
             summary="Move credits on-chain: claimable by the bound EVM address after the next epoch")
def post_withdrawal(
    ctx: ContextDep, signer: SignerDep,
    body: Annotated[dict[str, Any], Body(description='{"amount": credits}')],
) -> AccountPublic:
    from ledger.withdrawals import WithdrawalError, withdraw

    amount = body.get("amount") if isinstance(body, dict) else None
    if not isinstance(amount, int) or isinstance(amount, bool):
        raise HTTPException(422, "amount must be an integer number of credits")
    try:
        withdraw(ctx, signer, amount)
    except WithdrawalError as exc:
        raise HTTPException(409, str(exc)) from None
    with session_scope(ctx.engine) as session:
        summary = account_summary(session, signer.hex())
    assert summary is not None
    return summary
