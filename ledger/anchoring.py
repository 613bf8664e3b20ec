"""Post closed epochs' balance roots to the Settlement contract, in order, exactly once.

The chain is the source of truth for "was it posted": before sending, we ask the contract
for its latest epoch. If the epoch is already there (a previous run posted it and then died
before recording, or another ledger process won), we look up the `RootPosted` log, check
the root matches, and record that transaction instead of sending a second one. The contract
itself refuses a repeated or older epoch id, so a race can waste gas but never double-post.
Each epoch is recorded in its own short database transaction, and no transaction is held
open while waiting for the chain, so a crash at any point resumes where it stopped.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlmodel import Session, col

from ledger.chain import Chain, ChainError, Deployment, Settlement, TxResult, connect, load_evm_key
from ledger.clock import now_ms
from ledger.models import Epoch, EpochBalance

log = logging.getLogger("corolla.ledger.anchoring")


class AnchorError(ChainError):
    """The chain disagrees with the ledger (a different root, or an epoch skipped on-chain)."""


@dataclass(frozen=True)
class Anchored:
    epoch: int
    tx_hash: str
    block: int
    sent: bool  # False when an earlier run had already posted it


def settlement_from_settings(settings: Any) -> Settlement:
    """Connect with the ledger's chain settings (chain_rpc, chain_key_file, chain_addresses_file)."""
    if not (settings.chain_rpc and settings.chain_key_file and settings.chain_addresses_file):
        raise ChainError("anchoring needs --chain-rpc, --chain-key and --chain-addresses together")
    deployment = Deployment.load(settings.chain_addresses_file)
    chain = Chain(connect(settings.chain_rpc), load_evm_key(settings.chain_key_file))
    deployment.check_chain_id(chain.chain_id, settings.chain_rpc)
    return Settlement(chain, deployment)


def anchor_pending_epochs(session: Session, settings: Any, settlement: Settlement | None = None) -> list[Anchored]:
    """Anchor every closed, rooted, unanchored epoch in epoch order; returns what was recorded.

    Commits after each epoch. Raises ChainError (after recording the epochs before it) if
    one fails; the next call resumes there.
    """
    numbers = list(session.execute(
        select(col(Epoch.number)).where(col(Epoch.root).is_not(None), col(Epoch.anchor_tx).is_(None))
        .order_by(col(Epoch.number))
    ).scalars())
    session.commit()  # release the (SQLite: write) transaction before talking to the chain
    if not numbers:
        return []
    settlement = settlement or settlement_from_settings(settings)
    done = []
    for number in numbers:
        result = _anchor_number(session, settlement, number)
        if result is not None:
            done.append(result)
    return done


def anchor_epoch(session: Session, epoch: Epoch, settings: Any = None) -> list[Anchored]:
    """Anchor `epoch` (just closed) together with any earlier epoch still unanchored.

    Pass the process's settings; without them, chain settings come from the environment
    (COROLLA_LEDGER_CHAIN_RPC, _CHAIN_KEY_FILE, _CHAIN_ADDRESSES_FILE).
    """
    if settings is None:
        from ledger.config import Settings

        settings = Settings()
    log.debug("anchoring up to epoch %d", epoch.number)
    return anchor_pending_epochs(session, settings)


def _anchor_number(session: Session, settlement: Settlement, number: int) -> Anchored | None:
    epoch = session.get(Epoch, number)
    if epoch is None or epoch.anchor_tx is not None or epoch.root is None:
        session.commit()
        return None  # another process recorded it meanwhile
    root = bytes.fromhex(epoch.root.removeprefix("0x"))
    total = int(session.execute(
        select(func.coalesce(func.sum(EpochBalance.cumulative), 0)).where(col(EpochBalance.epoch) == number)
    ).scalar_one())
    session.commit()

    latest = settlement.latest_epoch()
    if number > latest:
        try:
            tx = settlement.post_root(number, root, total)
        except ChainError:
            if settlement.latest_epoch() < number:
                raise
            # Another ledger process posted it between our check and our send: record theirs.
        else:
            _record(session, number, tx)
            _log_anchored(number, root, tx, sent=True)
            return Anchored(number, tx.tx_hash, tx.block, True)
        latest = settlement.latest_epoch()
    if number <= latest:
        on_chain = settlement.root_of(number)
        if on_chain == bytes(32):
            raise AnchorError(f"epoch {number} was skipped on-chain (latest is {latest}); it can no longer be posted")
        if on_chain != root:
            raise AnchorError(f"epoch {number} has root 0x{on_chain.hex()} on-chain but {epoch.root} in the ledger")
        found = settlement.find_post(number)
        if found is None:
            raise AnchorError(f"epoch {number} is on-chain but its RootPosted log was not found")
        _record(session, number, found)
        _log_anchored(number, root, found, sent=False)
        return Anchored(number, found.tx_hash, found.block, False)
    raise AnchorError(f"epoch {number} is not on-chain after posting (latest is {latest})")


def _log_anchored(number: int, root: bytes, tx: TxResult, sent: bool) -> None:
    log.info("epoch %d anchored: root %s, tx %s, block %d%s", number, "0x" + root.hex(), tx.tx_hash, tx.block,
             "" if sent else " (found on-chain, not re-sent)")


def _record(session: Session, number: int, tx: TxResult) -> None:
    epoch = session.get(Epoch, number)
    assert epoch is not None
    epoch.anchor_tx, epoch.anchor_block, epoch.anchored_at = tx.tx_hash, tx.block, now_ms()
    session.add(epoch)
    session.commit()
