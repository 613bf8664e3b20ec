"""Epoch settlement: pay verified work, settle ticket spending, slash cheaters, commit a root.

`close_epoch` runs in one transaction, in this order:
1. Receipts become payable when they passed a verdict, or were not sampled (no verdict)
   and were ingested more than `grace_period_s` ago; with `require_client_signature`
   only counter-signed ones. Pending receipts with a failed verdict become `failed`.
2. Work is minted per node: the sum of its payable receipts' `value` (mint → node).
3. Ticket spending: for each ticket, the prices of its paid receipts stamped before the
   ticket's expiry move escrow → node, never past the ticket's remaining cap.
4. Tickets past expiry + grace return their unspent escrow to the client and close.
5. Each failed verdict not yet applied slashes its node: `slash_multiple` × the value the
   node claimed in this epoch (its receipts settled now plus the failed ones), capped by
   its balance (node → slash).
6. Accounts bound to an EVM address get a cumulative claimable amount: every credit they
   withdrew from the off-chain books (ledger/withdrawals.py); their BalanceTree root is stored on
   the epoch row. If a chain is configured, `ledger.anchoring.anchor_epoch` posts it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col

from ledger.clock import now_ms
from ledger.context import LedgerContext
from ledger.db import session_scope
from ledger.journal import Transfer, balance, post
from ledger.models import Account, Epoch, EpochBalance, Receipt, Ticket, Verdict
from ledger.withdrawals import withdrawn
from protocol.merkle import BalanceTree

log = logging.getLogger("corolla.ledger.epochs")

PASS, FAIL, UNREACHABLE = 1, 2, 3


class EpochBusy(RuntimeError):
    """Another process closed the same epoch first."""


@dataclass
class EpochSummary:
    number: int
    receipts_paid: int
    receipts_failed: int
    work_minted: int
    ticket_spent: int
    refunded: int
    slashed: int
    root: str | None
    accounts: int


def _pay_work(session: Session, n: int) -> tuple[int, int]:
    rows = session.execute(
        select(col(Receipt.node_key), func.sum(col(Receipt.value)), func.count())
        .where(col(Receipt.epoch) == n, col(Receipt.status) == "paid")
        .group_by(col(Receipt.node_key)).order_by(col(Receipt.node_key))
    ).all()
    transfers = [Transfer("mint", node, int(total), "work", f"epoch:{n}", n) for node, total, _ in rows if total]
    post(session, transfers)
    return sum(int(c) for _, _, c in rows), sum(t.amount for t in transfers)


def _settle_tickets(session: Session, n: int) -> int:
    rows = session.execute(
        select(col(Receipt.ticket_id), col(Receipt.node_key), func.sum(col(Receipt.price)))
        .join(Ticket, col(Ticket.id) == col(Receipt.ticket_id))
        .where(col(Receipt.epoch) == n, col(Receipt.status) == "paid", col(Receipt.ticket_id) != "",
               col(Receipt.timestamp_ms) < col(Ticket.expiry_ms))
        .group_by(col(Receipt.ticket_id), col(Receipt.node_key)).order_by(col(Receipt.ticket_id), col(Receipt.node_key))
    ).all()
    spent_total = 0
    transfers = []
    for ticket_id, node, price in rows:
        ticket = session.get(Ticket, ticket_id)
        if ticket is None or ticket.status != "open":
            continue
        pay = min(int(price or 0), ticket.cap - ticket.spent - ticket.refunded)
        if pay <= 0:
            continue
        ticket.spent += pay
        spent_total += pay
        transfers.append(Transfer("escrow", node, pay, "spend", f"ticket:{ticket_id}", n))
    post(session, transfers)
    return spent_total


def _refund_expired(session: Session, n: int, now: int, grace_ms: int) -> int:
    expired = session.execute(
        select(Ticket).where(col(Ticket.status) == "open", col(Ticket.expiry_ms) + grace_ms <= now)
    ).scalars().all()
    transfers = []
    for ticket in expired:
        left = ticket.cap - ticket.spent - ticket.refunded
        if left > 0:
            ticket.refunded += left
            transfers.append(Transfer("escrow", ticket.client_key, left, "refund", f"ticket:{ticket.id}", n))
        ticket.status = "closed"
    post(session, transfers)
    return sum(t.amount for t in transfers)


def _apply_slashes(session: Session, n: int, multiple: int) -> int:
    rows = session.execute(
        select(col(Verdict.id), col(Receipt.node_key), col(Receipt.id), col(Receipt.value), col(Receipt.epoch))
        .join(Receipt, col(Receipt.id) == col(Verdict.receipt_id))
        .where(col(Verdict.result) == FAIL, col(Verdict.slash_epoch).is_(None))  # type: ignore[union-attr]
    ).all()
    by_node: dict[str, tuple[list[str], dict[str, int]]] = {}
    for vid, node, rid, value, epoch in rows:
        vids, failed = by_node.setdefault(node, ([], {}))
        vids.append(vid)
        if epoch != n:  # failed receipts settled earlier still count as claimed
            failed[rid] = int(value)
    total = 0
    transfers = []
    for node in sorted(by_node):
        vids, failed = by_node[node]
        claimed_now = session.execute(
            select(func.coalesce(func.sum(col(Receipt.value)), 0)).where(col(Receipt.epoch) == n, col(Receipt.node_key) == node)
        ).scalar_one()
        claimed = int(claimed_now) + sum(failed.values())
        amount = min(multiple * claimed, balance(session, node))
        if amount > 0:
            transfers.append(Transfer(node, "slash", amount, "slash", f"epoch:{n}", n))
            total += amount
        session.execute(update(Verdict).where(col(Verdict.id).in_(vids)).values(slash_epoch=n))  # type: ignore[attr-defined]
    post(session, transfers)
    return total


def _balance_root(session: Session, n: int) -> tuple[str | None, int]:
    bound = session.execute(select(Account).where(col(Account.evm_address).is_not(None))).scalars().all()  # type: ignore[union-attr]
    if not bound:
        return None, 0
    entries = []
    for account in bound:
        # what the address may claim: every credit it withdrew from the off-chain books
        account.cumulative = max(account.cumulative, withdrawn(session, account.key))
        entries.append((account.evm_address or "", account.cumulative, account.key))
    tree = BalanceTree([(addr, cum) for addr, cum, _ in entries])
    for addr, cum, key in entries:
        session.add(EpochBalance(epoch=n, evm_address=addr, account=key, cumulative=cum))
    return "0x" + tree.root.hex(), len(entries)


def close_epoch(ctx: LedgerContext, now: int | None = None) -> EpochSummary:
    """Close the next epoch (see module docstring); EpochBusy if another closer won."""
    settings = ctx.settings
    now = now_ms() if now is None else now
    grace_ms = int(settings.grace_period_s * 1000)
    cutoff = now - grace_ms
    try:
        with session_scope(ctx.engine) as session:
            last = session.execute(select(Epoch).order_by(col(Epoch.number).desc()).limit(1)).scalars().first()  # type: ignore[attr-defined]
            n = (last.number + 1) if last else 1
            epoch = Epoch(number=n, started_ms=last.closed_ms if last else 0, closed_ms=now)
            session.add(epoch)
            session.flush()  # claims epoch n: a concurrent closer blocks here and then fails

            payable = and_(
                col(Receipt.status) == "pending",
                or_(col(Receipt.verdict_result) == PASS,
                    and_(col(Receipt.verdict_result) == 0, col(Receipt.ingested_ms) <= cutoff)),
            )
            if settings.require_client_signature:
                payable = and_(payable, col(Receipt.acked) == True)  # noqa: E712
            session.execute(update(Receipt).where(payable).values(status="paid", epoch=n))
            failed = session.execute(
                update(Receipt).where(col(Receipt.status) == "pending", col(Receipt.verdict_result) == FAIL)  # type: ignore[arg-type]
                .values(status="failed", epoch=n)
            )
            session.execute(
                update(Receipt).where(col(Receipt.status) == "pending", col(Receipt.verdict_result) == UNREACHABLE,  # type: ignore[arg-type]
                                      col(Receipt.ingested_ms) <= cutoff)
                .values(status="withheld", epoch=n)
            )
            epoch.receipts_paid, epoch.work_minted = _pay_work(session, n)
            epoch.receipts_failed = int(failed.rowcount or 0)  # type: ignore[attr-defined]
            epoch.ticket_spent = _settle_tickets(session, n)
            epoch.refunded = _refund_expired(session, n, now, grace_ms)
            epoch.slashed = _apply_slashes(session, n, settings.slash_multiple)
            epoch.root, epoch.accounts = _balance_root(session, n)
            summary = EpochSummary(n, epoch.receipts_paid, epoch.receipts_failed, epoch.work_minted,
                                   epoch.ticket_spent, epoch.refunded, epoch.slashed, epoch.root, epoch.accounts)
    except IntegrityError:
        raise EpochBusy("another process closed this epoch at the same time; try again") from None
    log.info("epoch %d closed: %d receipts paid (%d credits), %d failed, %d spent on tickets, %d refunded, "
             "%d slashed, root %s", summary.number, summary.receipts_paid, summary.work_minted,
             summary.receipts_failed, summary.ticket_spent, summary.refunded, summary.slashed, summary.root)
    if settings.chain_rpc:
        anchor(ctx, summary.number)
    return summary


def anchor(ctx: LedgerContext, number: int) -> None:
    """Post epoch `number`'s root on-chain via ledger.anchoring (written by the chain side).

    Failures are logged, never raised: the epoch stays closed and unanchored (anchor_tx is
    NULL), and the anchoring module catches up on the next call.
    """
    try:
        from ledger.anchoring import anchor_epoch
    except ImportError:
        log.warning("chain_rpc is set but ledger.anchoring is not available; epoch %d not anchored", number)
        return
    from ledger.chain import ChainError

    try:
        with ctx.anchor_lock, session_scope(ctx.engine) as session:
            epoch = session.get(Epoch, number)
            if epoch is not None:
                anchor_epoch(session, epoch, ctx.settings)
    except ChainError as exc:  # chain unreachable or refusing: expected, one line per attempt
        log.warning("anchoring epoch %d failed: %s; it stays unanchored until the next attempt", number, exc)
    except Exception:
        log.exception("anchoring epoch %d failed; it stays unanchored until the next attempt", number)


def epoch_proof(session: Session, evm_address: str, number: int | None = None) -> dict | None:
    """{epoch, root, cumulative, proof[]} for the latest (or given) epoch with a leaf for the address."""
    from eth_utils import to_checksum_address

    address = to_checksum_address(evm_address)
    query = select(Epoch).where(col(Epoch.root).is_not(None))  # type: ignore[union-attr]
    if number is not None:
        query = query.where(col(Epoch.number) == number)
    epoch = session.execute(query.order_by(col(Epoch.number).desc()).limit(1)).scalars().first()  # type: ignore[attr-defined]
    if epoch is None:
        return None
    leaves = session.execute(select(EpochBalance).where(col(EpochBalance.epoch) == epoch.number)).scalars().all()
    mine = next((leaf for leaf in leaves if leaf.evm_address == address), None)
    if mine is None:
        return None
    tree = BalanceTree([(leaf.evm_address, leaf.cumulative) for leaf in leaves])
    return {
        "epoch": epoch.number, "root": epoch.root, "account": mine.account, "evm_address": address,
        "cumulative": mine.cumulative, "proof": ["0x" + p.hex() for p in tree.proof(address)],
    }
