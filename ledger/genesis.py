"""Dev faucet: configured `KEY:AMOUNT` grants minted once, so clients can pay before earning.

Each grant is journaled as `mint → KEY` with ref `genesis:KEY:AMOUNT`; a restart with the
same configuration finds the ref and mints nothing again.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlmodel import col

from ledger.clock import now_ms
from ledger.context import LedgerContext
from ledger.db import insert_ignore, session_scope
from ledger.journal import transfer
from ledger.models import Account, JournalEntry


def apply_grants(ctx: LedgerContext) -> int:
    """Mint the configured grants that were not minted before; returns credits minted now."""
    minted = 0
    for key, amount in ctx.settings.parsed_grants():
        ref = f"genesis:{key.hex()}:{amount}"
        with session_scope(ctx.engine) as session:
            if session.execute(select(col(JournalEntry.id)).where(col(JournalEntry.ref) == ref).limit(1)).first():
                continue
            insert_ignore(session, Account, [{"key": key.hex(), "created_ms": now_ms(), "role": "", "stake": 0,
                                              "cumulative": 0}], "key")
            transfer(session, "mint", key.hex(), amount, "grant", ref)
            minted += amount
    return minted
