"""Verdicts from verifiers: who may post them and what they do to a receipt.

Only accounts with the verifier role (configured keys, or granted by an admin) may post,
and only verdicts they signed themselves. A verdict is stored once (id = digest of its
encoding). The receipt keeps the strongest result seen: fail beats pass beats
unreachable, so one honest detection cannot be washed out by later passes. A failed
verdict withholds the receipt's payment and slashes its node at the next epoch
(epochs.py), also when the receipt was already paid.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from sqlalchemy import case, update
from sqlmodel import col

from ledger.clock import now_ms
from ledger.context import LedgerContext
from ledger.db import insert_ignore, session_scope
from ledger.models import Account, Receipt, VerdictEvidence
from ledger.models import Verdict as VerdictRow
from protocol.verdicts import Result, SignedVerdict, openings_hash


class VerdictError(ValueError):
    def __init__(self, reason: str, status: int = 422):
        super().__init__(reason)
        self.status = status


# Strength of each result for the receipt's summary (higher wins).
_RANK = {0: 0, int(Result.UNREACHABLE): 1, int(Result.PASS): 2, int(Result.FAIL): 3}


def is_verifier(ctx: LedgerContext, session: Any, key: bytes) -> bool:
    if key in ctx.settings.verifier_key_bytes:
        return True
    account = session.get(Account, key.hex())
    return account is not None and account.role == "verifier"


MAX_EVIDENCE_BYTES = 8 << 20


def _evidence(body: Any, claimed_hash: bytes) -> str | None:
    """The base64 `evidence` posted with a verdict, checked against its openings_hash."""
    raw = body.get("evidence") if isinstance(body, dict) else None
    if raw is None:
        return None
    if not isinstance(raw, str):
        raise VerdictError("evidence must be a base64 string")
    if len(raw) > MAX_EVIDENCE_BYTES * 4 // 3 + 4:
        raise VerdictError(f"evidence larger than {MAX_EVIDENCE_BYTES >> 20} MiB", 413)
    try:
        data = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        raise VerdictError("evidence is not valid base64") from None
    if openings_hash(data) != claimed_hash:
        raise VerdictError("evidence does not hash to the verdict's openings_hash")
    return raw


def record_verdict(ctx: LedgerContext, signer: bytes, body: Any) -> tuple[str, bool]:
    """Store a signed verdict; returns (verdict id, newly stored). VerdictError on refusal."""
    try:
        sv = SignedVerdict.from_json(body)
    except (ValueError, TypeError, AttributeError) as exc:
        raise VerdictError(f"malformed verdict: {exc}") from None
    v = sv.verdict
    if v.verifier_key != signer:
        raise VerdictError("a verifier posts only verdicts it signed itself", 403)
    if not sv.verify():
        raise VerdictError("bad verdict signature", 422)
    vid = sv.id.hex()
    evidence = _evidence(body, v.openings_hash)
    with session_scope(ctx.engine) as session:
        if not is_verifier(ctx, session, signer):
            raise VerdictError("this key has no verifier role", 403)
        receipt = session.get(Receipt, v.receipt_id.hex())
        if receipt is None:
            raise VerdictError("unknown receipt", 404)
        inserted = insert_ignore(session, VerdictRow, [{
            "id": vid, "receipt_id": v.receipt_id.hex(), "verifier_key": signer.hex(), "block": v.block,
            "result": int(v.result), "reason": int(v.reason), "openings_hash": v.openings_hash.hex(),
            "tolerance": v.tolerance, "measured": v.measured, "timestamp_ms": v.timestamp_ms,
            "ingested_ms": now_ms(), "slash_epoch": None, "body": json.dumps(sv.to_json()),
        }], "id")
        if evidence is not None:
            insert_ignore(session, VerdictEvidence, [{"verdict_id": vid, "evidence": evidence}], "verdict_id")
        if inserted:
            new = int(v.result)
            current = col(Receipt.verdict_result)
            rank_current = case(*((current == r, k) for r, k in _RANK.items()), else_=0)
            session.execute(
                update(Receipt).where(col(Receipt.id) == receipt.id, rank_current < _RANK[new])  # type: ignore[arg-type]
                .values(verdict_result=new)
            )
    return vid, bool(inserted)
