"""`corolla node earnings`: credits a node earned per epoch, read from the ledger.

The ledger's journal records, per epoch, what it minted for the node's verified work
(`work`), what clients' tickets paid it for priority (`spend`), and what it lost to
slashing (`slash`). This groups the node's journal entries by epoch into one table; the
balance it shows is spendable with the same key as a client (`--spend` on generate).
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

from protocol.identity import Identity, KeyFileError, default_key_path
from protocol.request_auth import sign_request

WORK_KINDS = {"work", "mint"}
TICKET_KINDS = {"spend", "ticket"}
SLASH_KINDS = {"slash"}


class EarningsError(RuntimeError):
    """The ledger could not be asked or answered something unusable (one line for the user)."""


@dataclass
class EpochEarnings:
    epoch: int
    work: int = 0
    tickets: int = 0
    slashed: int = 0
    receipts: set[str] = field(default_factory=set)

    @property
    def net(self) -> int:
        return self.work + self.tickets + self.slashed


def earnings_by_epoch(entries: list[dict[str, Any]]) -> list[EpochEarnings]:
    """Group the node's own journal entries (signed deltas) by epoch, oldest first."""
    epochs: dict[int, EpochEarnings] = defaultdict(lambda: EpochEarnings(0))
    for e in entries:
        epoch = e.get("epoch")
        if epoch is None:
            continue  # not settled yet (e.g. a grant or an escrow)
        kind, delta = str(e.get("kind", "")), int(e.get("delta", e.get("amount", 0)) or 0)
        row = epochs[int(epoch)]
        row.epoch = int(epoch)
        if kind in WORK_KINDS:
            row.work += delta
        elif kind in TICKET_KINDS and delta > 0:
            row.tickets += delta
        elif kind in SLASH_KINDS:
            row.slashed += delta
    return [epochs[k] for k in sorted(epochs)]


def _get(http: httpx.Client, ledger: str, identity: Identity, path: str) -> Any:
    try:
        resp = http.get(ledger.rstrip("/") + path, headers=sign_request(identity, "GET", path, b""))
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        raise EarningsError(f"cannot reach the ledger at {ledger}: {exc}") from None
    if resp.status_code == 404:
        raise EarningsError(f"the ledger has no account {identity.public_hex} yet (serve some work first)")
    if resp.status_code >= 400:
        raise EarningsError(f"the ledger answered {resp.status_code} to {path}: {resp.text[:200]}")
    try:
        return resp.json()
    except ValueError:
        raise EarningsError(f"the ledger's answer to {path} is not JSON") from None


def fetch(ledger: str, identity: Identity) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    key = identity.public_hex
    with httpx.Client(timeout=10.0) as http:
        account = _get(http, ledger, identity, f"/v1/accounts/{key}")
        history = _get(http, ledger, identity, f"/v1/accounts/{key}/history?limit=1000")
    entries = history.get("entries", history.get("history", [])) if isinstance(history, dict) else history
    return account, list(entries or [])


def render(account: dict[str, Any], rows: list[EpochEarnings], console: Console) -> None:
    table = Table(title=f"earnings of node {str(account.get('key', ''))[:16]}…")
    for col, justify in (("epoch", "right"), ("verified work", "right"), ("ticket income", "right"),
                         ("slashed", "right"), ("net", "right")):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for r in rows:
        table.add_row(str(r.epoch), str(r.work), str(r.tickets), str(r.slashed), f"{r.net:+d}")
    if not rows:
        table.add_row("-", "nothing settled yet", "", "", "")
    total = sum(r.net for r in rows)
    table.add_section()
    table.add_row("all", str(sum(r.work for r in rows)), str(sum(r.tickets for r in rows)),
                  str(sum(r.slashed for r in rows)), f"{total:+d}")
    console.print(table)
    console.print(f"balance {int(account.get('balance', 0))} credits, "
                  f"in escrow {int(account.get('escrow', 0))} (spend them with the same key)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="corolla node earnings", description=__doc__.splitlines()[0])
    p.add_argument("--ledger", required=True, help="ledger URL, e.g. http://127.0.0.1:8700")
    p.add_argument("--key", default=None, help="the node's Ed25519 key file (default: $COROLLA_KEY or ~/.corolla/identity.key)")
    p.add_argument("--width", type=int, default=None, help="table width in characters (default: the terminal's)")
    return p


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        identity = Identity.load(args.key or default_key_path())
    except KeyFileError as exc:
        print(f"corolla node earnings: {exc}", file=sys.stderr)
        return 2
    try:
        account, entries = fetch(args.ledger, identity)
    except EarningsError as exc:
        print(f"corolla node earnings: {exc}", file=sys.stderr)
        return 2
    render(account, earnings_by_epoch(entries), Console(width=args.width))
    return 0
