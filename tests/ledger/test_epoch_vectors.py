"""The epoch balance root and proofs equal the published vectors (protocol/vectors/balance_tree.json),
which the Settlement contract's tests also assert."""

from __future__ import annotations

import json
import os
from pathlib import Path

from sqlmodel import Session

from ledger.app import build_context
from ledger.config import Settings
from ledger.db import session_scope
from ledger.epochs import close_epoch, epoch_proof
from ledger.models import Account

VECTORS = Path(__file__).resolve().parents[2] / "protocol" / "vectors" / "balance_tree.json"


def test_epoch_root_and_proofs_match_the_balance_tree_vectors(tmp_path: Path) -> None:
    vectors = json.loads(VECTORS.read_text())
    ctx = build_context(Settings(db_url=f"sqlite:///{tmp_path / 'v.db'}", key_file=str(tmp_path / "k")))
    with session_scope(ctx.engine) as session:
        for entry in vectors["entries"]:
            # cumulative carried from earlier epochs (monotonic), no new earnings this epoch
            session.add(Account(key=os.urandom(32).hex(), evm_address=entry["account"],
                                cumulative=entry["cumulative"], created_ms=0))
    summary = close_epoch(ctx)
    assert summary.root == vectors["root"] and summary.accounts == len(vectors["entries"])
    with Session(ctx.engine) as session:
        for entry in vectors["entries"]:
            proof = epoch_proof(session, entry["account"].lower())
            assert proof is not None
            assert (proof["root"], proof["cumulative"], proof["proof"]) == \
                (vectors["root"], entry["cumulative"], entry["proof"])
    ctx.engine.dispose()
    ctx.read_engine.dispose()
