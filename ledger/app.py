"""The ledger's FastAPI application: `create_app(settings)`.

Creating the app opens the database (migrating the schema), loads or creates the ledger
key and mints configured genesis grants. While serving, an APScheduler job closes an
epoch every `epoch_minutes` and prunes old request nonces. With a chain configured, one job
at start-up catches up on epochs closed but not anchored, and another retries them every
`anchor_retry_s` seconds, so a root whose post failed (chain unreachable) reaches the chain
without waiting for the next epoch close; posting is idempotent (ledger/anchoring.py).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from sqlalchemy.exc import DataError, OperationalError

from ledger.auth import prune_nonces
from ledger.config import Settings
from ledger.context import LedgerContext
from ledger.db import make_engine, migrate
from ledger.epochs import EpochBusy, close_epoch
from ledger.genesis import apply_grants
from ledger.routes import accounts, bindings, epochs, manifests, meta, receipts, tickets, verdicts
from ledger.signature_pool import SignaturePool
from protocol.identity import Identity

log = logging.getLogger("corolla.ledger")
DASHBOARD = Path(__file__).parent / "dashboard"


def build_context(settings: Settings, identity: Identity | None = None) -> LedgerContext:
    """Open the database (migrated) and the ledger key; mint genesis grants once."""
    engine = make_engine(settings.db_url)
    migrate(engine)
    ctx = LedgerContext(
        settings=settings, engine=engine, read_engine=make_engine(settings.db_url, read_only=True), identity=identity or Identity.load_or_create(settings.key_file),
        pool=SignaturePool(settings.verify_workers),
    )
    apply_grants(ctx)
    return ctx


def _epoch_job(ctx: LedgerContext) -> None:
    try:
        close_epoch(ctx)
        prune_nonces(ctx)
    except EpochBusy:
        log.info("epoch job: another process closed the epoch")
    except Exception:
        log.exception("epoch job failed; it runs again at the next interval")


def _anchor_job(ctx: LedgerContext) -> None:
    """Anchor every closed epoch not yet on-chain (cheap no-op, no RPC, when there is none)."""
    from sqlmodel import Session, col, select

    from ledger.epochs import anchor
    from ledger.models import Epoch

    with Session(ctx.engine) as session:
        pending = session.exec(select(col(Epoch.number)).where(col(Epoch.root).is_not(None),
                                                               col(Epoch.anchor_tx).is_(None))
                               .order_by(col(Epoch.number).desc()).limit(1)).first()
    if pending is not None:
        anchor(ctx, pending)


def create_app(settings: Settings, identity: Identity | None = None) -> FastAPI:
    ctx = build_context(settings, identity)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        scheduler = None
        if settings.epoch_minutes > 0 or settings.chain_rpc:
            from apscheduler.schedulers.background import BackgroundScheduler

            scheduler = BackgroundScheduler(daemon=True)
            if settings.epoch_minutes > 0:
                scheduler.add_job(_epoch_job, "interval", args=[ctx], minutes=settings.epoch_minutes,
                                  id="close-epoch", max_instances=1, coalesce=True)
            if settings.chain_rpc:  # catch up on epochs closed but not anchored before a restart
                scheduler.add_job(_anchor_job, args=[ctx], id="anchor-catch-up")
                if settings.anchor_retry_s > 0:  # and on epochs whose post failed since
                    scheduler.add_job(_anchor_job, "interval", args=[ctx], seconds=settings.anchor_retry_s,
                                      id="anchor-retry", max_instances=1, coalesce=True)
            scheduler.start()
        try:
            yield
        finally:
            if scheduler is not None:
                scheduler.shutdown(wait=False)
            ctx.pool.close()
            ctx.engine.dispose()
            ctx.read_engine.dispose()

    app = FastAPI(
        title="Corolla ledger",
        version="1.0",
        description=(
            "System of record of the Corolla swarm: receipts, verdicts, a double-entry credit journal, "
            "priority tickets, epochs with Merkle roots. Write requests are signed with the "
            "X-Corolla-Key/-Timestamp/-Nonce/-Signature headers (protocol/request_auth.py); reads are public. "
            "Audit dashboard at /dashboard."
        ),
        lifespan=lifespan,
        redirect_slashes=False,  # a junk empty path segment is a 404, not a redirect
    )
    app.state.ctx = ctx
    for module in (receipts, verdicts, tickets, accounts, bindings, manifests, epochs, meta):
        app.include_router(module.router)

    @app.exception_handler(OperationalError)
    async def _db_busy(_request: Request, exc: OperationalError) -> JSONResponse:
        log.warning("database error: %s", exc)
        return JSONResponse({"detail": "database busy or unavailable; retry"}, status_code=503)

    @app.exception_handler(DataError)
    async def _bad_value(_request: Request, exc: DataError) -> JSONResponse:
        return JSONResponse({"detail": "a value is not acceptable to the database"}, status_code=422)

    @app.get("/dashboard", response_class=HTMLResponse, include_in_schema=False)
    def dashboard() -> FileResponse:
        return FileResponse(DASHBOARD / "index.html", media_type="text/html")

    @app.get("/dashboard/{asset}", include_in_schema=False)
    def dashboard_asset(asset: str) -> FileResponse:
        allowed = {"app.js": "text/javascript", "style.css": "text/css"}
        if asset not in allowed:
            return JSONResponse({"detail": "not found"}, status_code=404)  # type: ignore[return-value]
        return FileResponse(DASHBOARD / asset, media_type=allowed[asset])

    return app
