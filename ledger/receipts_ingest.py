"""Receipt ingestion: check each signed receipt, store it once, queue it for verification.

Checks per receipt: parseable, node signature, client counter-signature (when present),
known model manifest, block span inside the model, sane batch/token counts, timestamp not
in the future, ticket (if any) issued by us to the same client for this node. A bad
receipt is rejected alone with its reason; the good ones in the batch are stored in one
statement (`INSERT ... ON CONFLICT DO NOTHING RETURNING id`), so a resubmission or a
concurrent overlapping batch is acknowledged as a duplicate and never counted twice.
A receipt first stored without its client's counter-signature is upgraded when a later
submission carries a valid one.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select, update
from sqlmodel import Session, col

from ledger.clock import now_ms
from ledger.context import LedgerContext
from ledger.db import insert_ignore, session_scope
from ledger.journal import MAX_AMOUNT
from ledger.models import Account, Manifest, Receipt, Ticket
from ledger.signature_pool import Checked
from protocol.manifests import ModelManifest


@dataclass
class IngestResult:
    accepted: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    rejected: list[dict[str, str]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"accepted": self.accepted, "duplicates": self.duplicates, "rejected": self.rejected}


def receipt_value(block_flops_per_token: int, tokens: int, blocks: int, flops_per_credit: int) -> int:
    """Credits a receipt's work is worth: block-FLOPs × tokens × blocks / flops_per_credit."""
    return block_flops_per_token * tokens * blocks // flops_per_credit


def load_manifest(ctx: LedgerContext, session: Session, model_hex: str) -> tuple[int, int] | None:
    cached = ctx.manifests.get(model_hex)
    if cached is None:
        row = session.get(Manifest, model_hex)
        if row is None:
            return None
        cached = ctx.manifests[model_hex] = (row.num_blocks, row.block_flops_per_token)
    return cached


def _semantic_problem(row: dict[str, Any], manifest: tuple[int, int] | None, now: int, skew_ms: int) -> str | None:
    if manifest is None:
        return "unknown model manifest (POST /v1/manifests first)"
    if row["block_end"] > manifest[0]:
        return f"block span [{row['block_start']}, {row['block_end']}) outside the model's {manifest[0]} blocks"
    if row["batch"] <= 0 or row["tokens"] <= 0 or row["tokens"] % row["batch"]:
        return "tokens must be a positive multiple of batch"
    if row["timestamp_ms"] > now + skew_ms:
        return "timestamp is in the future"
    if row["price"] >= MAX_AMOUNT:
        return "price out of range"
    return None


def _ticket_problem(row: dict[str, Any], ticket: Ticket | None) -> str | None:
    if ticket is None:
        return "unknown ticket"
    if ticket.client_key != row["client_key"]:
        return "ticket belongs to another client"
    if ticket.node_key and ticket.node_key != row["node_key"]:
        return "ticket is for another node"
    return None


def ingest(ctx: LedgerContext, items: list[Any]) -> IngestResult:
    """Check and store a batch of SignedReceipt JSON objects."""
    result = IngestResult()
    settings = ctx.settings
    now = now_ms()
    skew_ms = int(settings.max_skew_s * 1000)
    unique: dict[str, Checked] = {}
    for checked in ctx.pool.check(items):
        if checked.problem is not None:
            result.rejected.append({"id": checked.id, "reason": checked.problem})
            continue
        prev = unique.get(checked.id)
        if prev is None or (not prev.acked and checked.acked):
            unique[checked.id] = checked
        else:
            result.duplicates.append(checked.id)

    with session_scope(ctx.engine) as session:
        candidates = [c.row for c in unique.values() if c.row is not None]
        ticket_ids = {row["ticket_id"] for row in candidates if row["ticket_id"]}
        tickets = {}
        if ticket_ids:
            tickets = {t.id: t for t in session.execute(select(Ticket).where(col(Ticket.id).in_(ticket_ids))).scalars()}
        rows: list[dict[str, Any]] = []
        for row in candidates:
            manifest = load_manifest(ctx, session, row["model"])
            problem = _semantic_problem(row, manifest, now, skew_ms)
            if problem is None and row["ticket_id"]:
                problem = _ticket_problem(row, tickets.get(row["ticket_id"]))
            if problem is None and manifest is not None:
                row["value"] = receipt_value(manifest[1], row["tokens"], row["block_end"] - row["block_start"],
                                             settings.flops_per_credit)
                if row["value"] >= MAX_AMOUNT:
                    problem = "claimed work is implausibly large"
            if problem:
                result.rejected.append({"id": row["id"], "reason": problem})
                continue
            row.update(ingested_ms=now, sample_draw=random.random(), verdict_result=0, status="pending", epoch=None)
            rows.append(row)
        rows.sort(key=lambda row: row["id"])  # one lock order for overlapping concurrent batches
        inserted = insert_ignore(session, Receipt, rows, "id")
        for row in rows:
            if row["acked"] and row["id"] not in inserted:  # upgrade a stored un-acknowledged copy
                session.execute(
                    update(Receipt).where(col(Receipt.id) == row["id"], col(Receipt.acked).is_(False))
                    .values(acked=True, raw=row["raw"])
                )
        nodes = {row["node_key"] for row in rows if row["id"] in inserted}
        if nodes:
            insert_ignore(session, Account, [{"key": k, "created_ms": now, "role": "", "stake": 0, "cumulative": 0}
                                             for k in sorted(nodes)], "key")
        for row in rows:
            (result.accepted if row["id"] in inserted else result.duplicates).append(row["id"])
    return result


def store_manifest(ctx: LedgerContext, manifest_json: dict[str, Any]) -> tuple[str, bool]:
    """Register a model manifest; returns (hash hex, newly stored). ValueError when malformed."""
    m = ModelManifest.from_json(manifest_json)
    if not 0 < m.block_flops_per_token < MAX_AMOUNT:
        raise ValueError("block_flops_per_token must be a positive 62-bit integer")
    if m.num_blocks > 65535:
        raise ValueError("num_blocks must fit a u16")
    h = m.manifest_hash().hex()
    with session_scope(ctx.engine) as session:
        inserted = insert_ignore(session, Manifest, [{
            "hash": h, "name": m.name[:200], "num_blocks": m.num_blocks,
            "block_flops_per_token": m.block_flops_per_token,
            "body": json.dumps(m.to_json(), sort_keys=True), "created_ms": now_ms(),
        }], "hash")
    return h, bool(inserted)
