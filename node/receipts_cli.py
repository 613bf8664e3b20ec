"""`corolla node receipts`: list the receipts in a node's outbox (works with no ledger configured)."""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
from pathlib import Path

from node.receipt_outbox import OutboxEntry, ReceiptOutbox, default_outbox_path
from protocol.identity import default_key_path


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="corolla node receipts", description="List the signed receipts in a node's outbox.")
    p.add_argument("--outbox", type=Path, default=None,
                   help="outbox SQLite file (default: next to --key, e.g. identity.receipts.sqlite)")
    p.add_argument("--key", type=Path, default=None,
                   help="node key file whose outbox to read (default: $COROLLA_KEY or ~/.corolla/identity.key)")
    p.add_argument("--limit", type=int, default=50, help="how many receipts to show, newest first (default 50)")
    p.add_argument("--offset", type=int, default=0, help="skip this many of the newest receipts")
    p.add_argument("--unshipped", action="store_true", help="only receipts not yet delivered to the ledger")
    p.add_argument("--json", action="store_true", help="one JSON object per receipt, then a summary object")
    return p


def _row(e: OutboxEntry) -> dict[str, object]:
    r = e.receipt.receipt
    return {
        "id": e.id.hex(), "kind": r.kind.name.lower(), "blocks": f"{r.block_start}:{r.block_end}",
        "session": r.session_id.hex(), "step": r.step, "tokens": r.tokens, "price": r.price,
        "acked": e.receipt.client_signature is not None,
        "shipped": e.status if e.shipped else "no", "reason": e.reason, "created_ms": e.created_ms,
    }


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    if args.limit < 1 or args.offset < 0:
        print("corolla node receipts: --limit must be >= 1 and --offset >= 0", file=sys.stderr)
        return 2
    path = args.outbox or default_outbox_path(args.key or default_key_path())
    try:
        outbox = ReceiptOutbox(path, read_only=True)
        with outbox:
            entries = outbox.list(args.limit, args.offset, shipped=False if args.unshipped else None)
            counts = outbox.counts()
    except FileNotFoundError:
        print(f"corolla node receipts: no outbox at {path} (pass --outbox PATH)", file=sys.stderr)
        return 2
    except sqlite3.DatabaseError as exc:
        print(f"corolla node receipts: {path} is not a receipt outbox ({exc})", file=sys.stderr)
        return 2
    rows = [_row(e) for e in entries]
    if args.json:
        for row in rows:
            print(json.dumps(row))
        print(json.dumps({"summary": counts.__dict__}))
        return 0
    header = f"{'id':<16}  {'kind':<9}  {'blocks':<7}  {'session/step':<20}  {'tokens':>7}  {'acked':<5}  shipped"
    print(header)
    for row in rows:
        session_step = f"{str(row['session'])[:12]}/{row['step']}"
        shipped = row["shipped"] if not row["reason"] else f"{row['shipped']} ({row['reason']})"
        print(f"{str(row['id'])[:16]:<16}  {row['kind']:<9}  {row['blocks']:<7}  {session_step:<20}  "
              f"{row['tokens']:>7}  {'yes' if row['acked'] else 'no':<5}  {shipped}")
    print(f"{counts.total} receipts: {counts.unshipped} waiting, {counts.accepted} accepted, "
          f"{counts.duplicate} duplicate, {counts.rejected} rejected, {counts.acked} acknowledged by clients")
    return 0
