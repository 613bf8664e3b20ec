"""Double-entry credit journal: every balance change is a debit and a credit of equal size.

A transfer writes two rows with the same `txn`: `-amount` on the debited account and
`+amount` on the credited one, inside the caller's transaction. Balances are sums of
`delta`. System accounts: `mint` (goes negative by everything minted), `burn` (grows by
everything burned), `escrow` (credits locked in open tickets), `slash` (confiscated).
`check_invariants` proves the books are consistent; `corolla ledger check` runs it.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

from sqlalchemy import func, insert, select
from sqlmodel import Session, col

from ledger.clock import now_ms
from ledger.models import SYSTEM_ACCOUNTS, Account, JournalEntry, Receipt, Ticket

MAX_AMOUNT = 2**62  # fits a signed 64-bit column with room for sums


@dataclass(frozen=True)
class Transfer:
    debit: str
    credit: str
    amount: int
    kind: str
    ref: str = ""
    epoch: int | None = None


def post(session: Session, transfers: list[Transfer]) -> None:
    """Journal the transfers (two rows each) in the caller's transaction."""
    rows = []
    ts = now_ms()
    for t in transfers:
        if not 0 < t.amount < MAX_AMOUNT:
            raise ValueError(f"transfer amount {t.amount} out of range")
        if t.debit == t.credit:
            raise ValueError("a transfer needs two different accounts")
        txn = uuid.uuid4().hex
        base = {"txn": txn, "kind": t.kind, "ref": t.ref, "epoch": t.epoch, "created_ms": ts}
        rows.append({**base, "account": t.debit, "delta": -t.amount})
        rows.append({**base, "account": t.credit, "delta": t.amount})
    if rows:
        session.execute(insert(JournalEntry), rows)


def transfer(session: Session, debit: str, credit: str, amount: int, kind: str, ref: str = "",
             epoch: int | None = None) -> None:
    post(session, [Transfer(debit, credit, amount, kind, ref, epoch)])


def balance(session: Session, account: str) -> int:
    total = session.execute(
        select(func.coalesce(func.sum(col(JournalEntry.delta)), 0)).where(col(JournalEntry.account) == account)
    ).scalar_one()
    return int(total)


def balances(session: Session) -> dict[str, int]:
    rows = session.execute(
        select(col(JournalEntry.account), func.sum(col(JournalEntry.delta))).group_by(col(JournalEntry.account))
    ).all()
    return {a: int(s) for a, s in rows}


def ensure_account(session: Session, key: str) -> Account:
    account = session.get(Account, key)
    if account is None:
        account = Account(key=key, created_ms=now_ms())
        session.add(account)
        session.flush()
    return account


@dataclass
class InvariantReport:
    """Totals and every violated invariant (empty `problems` = consistent books)."""

    minted: int = 0
    burned: int = 0
    held: int = 0  # sum of all non-mint, non-burn accounts
    escrow: int = 0
    slashed: int = 0
    accounts: int = 0
    entries: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def check_invariants(session: Session) -> InvariantReport:
    """Prove: every txn balances, sum(accounts) = minted − burned, no user account is
    negative, escrow equals open ticket remainders, paid work equals minted work."""
    report = InvariantReport()
    bal = balances(session)
    report.entries = int(session.execute(select(func.count()).select_from(JournalEntry)).scalar_one())
    report.accounts = len(bal)
    report.minted = -bal.get("mint", 0)
    report.burned = bal.get("burn", 0)
    report.escrow = bal.get("escrow", 0)
    report.slashed = bal.get("slash", 0)
    report.held = sum(v for k, v in bal.items() if k not in ("mint", "burn"))
    if report.held != report.minted - report.burned:
        report.problems.append(f"accounts hold {report.held} but minted − burned = {report.minted - report.burned}")
    for key, value in bal.items():
        if key != "mint" and value < 0:
            report.problems.append(f"account {key} is negative ({value})")
    unbalanced = session.execute(
        select(col(JournalEntry.txn))
        .group_by(col(JournalEntry.txn))
        .having((func.sum(col(JournalEntry.delta)) != 0) | (func.count() != 2))
        .limit(10)
    ).scalars().all()
    for txn in unbalanced:
        report.problems.append(f"journal transaction {txn} does not balance")
    tickets_left = session.execute(
        select(func.coalesce(func.sum(col(Ticket.cap) - col(Ticket.spent) - col(Ticket.refunded)), 0))
    ).scalar_one()
    if int(tickets_left) != report.escrow:
        report.problems.append(f"escrow holds {report.escrow} but tickets have {int(tickets_left)} unspent")
    overspent = session.execute(
        select(col(Ticket.id)).where((col(Ticket.spent) + col(Ticket.refunded) > col(Ticket.cap)) | (col(Ticket.spent) < 0)).limit(10)
    ).scalars().all()
    for tid in overspent:
        report.problems.append(f"ticket {tid} spent or refunded past its cap")
    paid_value = session.execute(
        select(func.coalesce(func.sum(col(Receipt.value)), 0)).where(col(Receipt.status) == "paid")
    ).scalar_one()
    work_minted = session.execute(
        select(func.coalesce(func.sum(col(JournalEntry.delta)), 0)).where(
            col(JournalEntry.kind) == "work", col(JournalEntry.account) == "mint"
        )
    ).scalar_one()
    if int(paid_value) != -int(work_minted):
        report.problems.append(f"paid receipts are worth {int(paid_value)} but work minted {-int(work_minted)}")
    return report


def is_system(key: str) -> bool:
    return key in SYSTEM_ACCOUNTS
