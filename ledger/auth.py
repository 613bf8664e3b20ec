"""Signed-request authentication for write endpoints (protocol.request_auth headers).

`SignerDep` verifies the signature over method, path, timestamp, nonce and body, rejects
timestamps outside the skew window, and records the nonce so a replayed request fails
(401). Nonces older than twice the skew are pruned by the epoch job: a replay that old
already fails the timestamp check.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Request
from sqlalchemy import delete
from sqlalchemy.exc import IntegrityError
from sqlmodel import col
from starlette.concurrency import run_in_threadpool

from ledger.clock import now_ms
from ledger.context import LedgerContext
from ledger.db import insert_ignore, session_scope
from ledger.models import Nonce
from protocol.request_auth import AuthError, authenticate_request


def get_context(request: Request) -> LedgerContext:
    return request.app.state.ctx  # type: ignore[no-any-return]


ContextDep = Annotated[LedgerContext, Depends(get_context)]


def _remember_nonce(ctx: LedgerContext, key: str, nonce: str, ts: int) -> bool:
    try:
        with session_scope(ctx.engine) as session:
            inserted = insert_ignore(session, Nonce, [{"key": key, "nonce": nonce, "timestamp_ms": ts}], "nonce")
    except IntegrityError:
        return False
    return bool(inserted)


async def signer(request: Request) -> bytes:
    """The public key that signed this request; 401 with the reason otherwise."""
    ctx: LedgerContext = request.app.state.ctx
    body = await request.body()
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    try:
        auth = authenticate_request(
            request.headers, request.method, target, body, now_ms(), int(ctx.settings.max_skew_s * 1000)
        )
    except AuthError as exc:
        raise HTTPException(401, f"unauthenticated: {exc.reason}") from None
    fresh = await run_in_threadpool(_remember_nonce, ctx, auth.public_key.hex(), auth.nonce.hex(), auth.timestamp_ms)
    if not fresh:
        raise HTTPException(401, "unauthenticated: replayed request (nonce already used)")
    return auth.public_key


SignerDep = Annotated[bytes, Depends(signer)]


def prune_nonces(ctx: LedgerContext) -> int:
    cutoff = now_ms() - 2 * int(ctx.settings.max_skew_s * 1000)
    with session_scope(ctx.engine) as session:
        result = session.execute(delete(Nonce).where(col(Nonce.timestamp_ms) < cutoff))  # type: ignore[arg-type]
        return int(result.rowcount or 0)  # type: ignore[attr-defined]
