"""Withdrawals: credits leave the off-chain books before they can be claimed on-chain.

An account bound to an EVM address moves credits to the system account "onchain"; the
epoch balance tree gives each address the total it ever withdrew (monotonic by
construction), which `Settlement.claim` pays out. Withdrawn credits can no longer be
spent off-chain, so the same credit is never both claimed and spent.
"""

from __future__ import annotations

from sqlmodel import Session, col, func, select

from ledger.clock import now_ms
from ledger.context import LedgerContext
from ledger.db import insert_ignore, is_postgres, session_scope
from ledger.journal import MAX_AMOUNT, balance, transfer
from ledger.models import Account, JournalEntry

ONCHAIN = "onchain"
WITHDRAW_KIND = "withdraw"


class WithdrawalError(ValueError):
    """A withdrawal the ledger refuses (reason for the account)."""


def withdraw(ctx: LedgerContext, key: bytes, amount: int) -> int:
    """Move `amount` credits of `key` on-chain; returns its new total withdrawn."""
    if not 0 < amount < MAX_AMOUNT:
        raise WithdrawalError("amount must be a positive number of credits")
    account_key = key.hex()
    with session_scope(ctx.engine) as session:
        if is_postgres(ctx.engine):  # serialize spends of one account
            session.execute(select(col(Account.key)).where(col(Account.key) == account_key).with_for_update())  # type: ignore[arg-type]
        account = session.get(Account, account_key)
        if account is None or not account.evm_address:
            raise WithdrawalError("bind this key to an EVM address first (POST /v1/accounts/bind)")
        available = balance(session, account_key)
        if available < amount:
            raise WithdrawalError(f"insufficient credits: balance {available}, withdrawal {amount}")
        insert_ignore(session, Account, [{"key": ONCHAIN, "created_ms": now_ms(), "role": "system", "stake": 0,
                                          "cumulative": 0}], "key")
        transfer(session, account_key, ONCHAIN, amount, WITHDRAW_KIND, ref=f"to:{account.evm_address}")
        return withdrawn(session, account_key)


def withdrawn(session: Session, account_key: str) -> int:
    """Total credits `account_key` ever withdrew on-chain (what its balance-tree leaf pays)."""
    total = session.execute(
        select(func.coalesce(func.sum(col(JournalEntry.delta)), 0)).where(
            col(JournalEntry.account) == account_key, col(JournalEntry.kind) == WITHDRAW_KIND
        )
    ).scalar_one()
    return -int(total)
