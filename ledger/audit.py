"""Read-side queries shared by the JSON API and the dashboard: accounts, nodes, verifiers, timeline."""

from __future__ import annotations

from sqlalchemy import case, func, select
from sqlmodel import Session, col

from ledger.journal import balance
from ledger.models import Account, JournalEntry, Receipt, Verdict
from ledger.schemas import AccountPublic, NodeInfo, TimelinePoint, VerifierStats
from ledger.tickets import escrow_of
from protocol.verdicts import Reason


def _receipt_counts(session: Session, keys: list[str]) -> dict[str, tuple[int, int, int, int]]:
    """node key -> (receipts, passes, fails, first ingested_ms)."""
    if not keys:
        return {}
    rows = session.execute(
        select(
            col(Receipt.node_key), func.count(),
            func.sum(case((col(Receipt.verdict_result) == 1, 1), else_=0)),
            func.sum(case((col(Receipt.verdict_result) == 2, 1), else_=0)),
            func.min(col(Receipt.ingested_ms)),
        ).where(col(Receipt.node_key).in_(keys)).group_by(col(Receipt.node_key))  # type: ignore[attr-defined]
    ).all()
    return {k: (int(c), int(p or 0), int(f or 0), int(first or 0)) for k, c, p, f, first in rows}


def account_summary(session: Session, key: str) -> AccountPublic | None:
    account = session.get(Account, key)
    has_entries = session.execute(select(col(JournalEntry.id)).where(col(JournalEntry.account) == key).limit(1)).first()
    if account is None and not has_entries:
        return None
    sums = dict(session.execute(
        select(col(JournalEntry.kind), func.sum(col(JournalEntry.delta)))
        .where(col(JournalEntry.account) == key).group_by(col(JournalEntry.kind))
    ).all())
    counts = _receipt_counts(session, [key]).get(key, (0, 0, 0, 0))
    return AccountPublic(
        key=key, role=account.role if account else "", evm_address=account.evm_address if account else None,
        balance=balance(session, key), escrow=escrow_of(session, key),
        earned=int(sums.get("work", 0) or 0) + int(sums.get("spend", 0) or 0) if key != "escrow" else 0,
        slashed=-int(sums.get("slash", 0) or 0) if key != "slash" else 0,
        stake=account.stake if account else 0, cumulative=account.cumulative if account else 0,
        receipts=counts[0], passes=counts[1], fails=counts[2],
    )


def list_accounts(session: Session, limit: int, offset: int) -> list[AccountPublic]:
    keys = session.execute(
        select(col(JournalEntry.account)).distinct().order_by(col(JournalEntry.account)).limit(limit).offset(offset)
    ).scalars().all()
    extra = session.execute(select(col(Account.key)).order_by(col(Account.key))).scalars().all()
    wanted = sorted(set(keys) | set(extra))[:limit] if offset == 0 else list(keys)
    out = []
    for key in wanted:
        summary = account_summary(session, key)
        if summary is not None:
            out.append(summary)
    return out


def list_nodes(session: Session) -> list[dict]:
    """Every key that submitted work, with work, pass/fail record, balance and stake."""
    rows = session.execute(
        select(
            col(Receipt.node_key), func.count(), func.sum(col(Receipt.value)),
            func.sum(case((col(Receipt.status) == "paid", col(Receipt.value)), else_=0)),
            func.sum(case((col(Receipt.verdict_result) == 1, 1), else_=0)),
            func.sum(case((col(Receipt.verdict_result) == 2, 1), else_=0)),
            func.sum(case((col(Receipt.verdict_result) == 3, 1), else_=0)),
            func.min(col(Receipt.ingested_ms)), func.sum(col(Receipt.tokens)),
        ).group_by(col(Receipt.node_key)).order_by(col(Receipt.node_key))
    ).all()
    out = []
    for key, n, claimed, paid, passes, fails, unreachable, first, tokens in rows:
        account = session.get(Account, key)
        out.append({
            "key": key, "receipts": int(n), "tokens": int(tokens or 0), "claimed": int(claimed or 0),
            "paid": int(paid or 0), "passes": int(passes or 0), "fails": int(fails or 0),
            "unreachable": int(unreachable or 0), "balance": balance(session, key),
            "stake": account.stake if account else 0, "evm_address": account.evm_address if account else None,
            "first_seen_ms": int(first or 0),
        })
    return out


def node_info(session: Session, key: str) -> NodeInfo:
    counts = _receipt_counts(session, [key]).get(key, (0, 0, 0, 0))
    account = session.get(Account, key)
    return NodeInfo(key=key, first_seen_ms=counts[3], receipts=counts[0], passes=counts[1], fails=counts[2],
                    stake=account.stake if account else 0, evm_address=account.evm_address if account else None)


def verifier_stats(session: Session) -> list[VerifierStats]:
    rows = session.execute(
        select(col(Verdict.verifier_key), col(Verdict.result), col(Verdict.reason), func.count())
        .group_by(col(Verdict.verifier_key), col(Verdict.result), col(Verdict.reason))
    ).all()
    stats: dict[str, VerifierStats] = {}
    for key, result, reason, n in rows:
        s = stats.setdefault(key, VerifierStats(key=key, checks=0, passes=0, fails=0, unreachable=0, by_reason={}))
        s.checks += n
        if result == 1:
            s.passes += n
        elif result == 2:
            s.fails += n
            name = Reason(reason).name.lower() if reason in Reason._value2member_map_ else str(reason)
            s.by_reason[name] = s.by_reason.get(name, 0) + n
        else:
            s.unreachable += n
    return [stats[k] for k in sorted(stats)]


def timeline(session: Session, bucket_ms: int, limit: int = 200) -> list[TimelinePoint]:
    """Verified work (value of passed or paid receipts) and failures per ingestion-time bucket."""
    bucket = col(Receipt.ingested_ms) // bucket_ms  # integer division on SQLite and PostgreSQL
    verified = case(((col(Receipt.verdict_result) == 1) | (col(Receipt.status) == "paid"), col(Receipt.value)), else_=0)
    rows = session.execute(
        select(bucket.label("b"), func.sum(verified), func.count(),
               func.sum(case((col(Receipt.verdict_result) == 2, 1), else_=0)))
        .group_by("b").order_by("b")
    ).all()
    rows = rows[-limit:]
    return [TimelinePoint(start_ms=int(b) * bucket_ms, verified_work=int(w or 0), receipts=int(c),
                          failures=int(f or 0)) for b, w, c, f in rows]
