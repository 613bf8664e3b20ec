"""`corolla wallet`: a client's balance, escrow, earnings and spending history from the ledger.

Read-only: it asks `GET /v1/accounts/{key}`, `GET /v1/accounts/{key}/history` and the
receipts nodes filed against the account's tickets (`GET /v1/receipts?client=KEY`), signed
with the account's key so it also works if the ledger keeps them private, and prints
tables. The same key works for a node operator: what a node earns, it can spend.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

from protocol.identity import Identity, KeyFileError, default_key_path
from protocol.request_auth import sign_request


@dataclass(frozen=True)
class AccountView:
    key: str
    balance: int
    escrow: int
    earned: int
    slashed: int


@dataclass(frozen=True)
class HistoryRow:
    when_ms: int
    kind: str
    delta: int
    epoch: int | None
    ref: str


class WalletError(RuntimeError):
    """The ledger could not be asked or answered something unusable (one line for the user)."""


def signed_get(http: httpx.Client, ledger_url: str, identity: Identity, path: str) -> Any:
    """GET `path` with the account's request signature; the JSON body or WalletError."""
    headers = sign_request(identity, "GET", path, b"")
    try:
        resp = http.get(ledger_url.rstrip("/") + path, headers=headers)
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        raise WalletError(f"cannot reach the ledger at {ledger_url}: {exc}") from None
    if resp.status_code == 404:
        raise WalletError(f"the ledger has no account {identity.public_hex} yet (it appears once it earns or is granted credits)")
    if resp.status_code >= 400:
        raise WalletError(f"the ledger answered {resp.status_code} to {path}: {resp.text[:200]}")
    try:
        return resp.json()
    except ValueError:
        raise WalletError(f"the ledger's answer to {path} is not JSON") from None


def fetch_account(http: httpx.Client, ledger_url: str, identity: Identity) -> AccountView:
    data = signed_get(http, ledger_url, identity, f"/v1/accounts/{identity.public_hex}")
    return AccountView(
        key=str(data.get("key", identity.public_hex)),
        balance=int(data.get("balance", 0)),
        escrow=int(data.get("escrow", 0)),
        earned=int(data.get("earned", 0)),
        slashed=int(data.get("slashed", 0)),
    )


def fetch_history(http: httpx.Client, ledger_url: str, identity: Identity) -> list[HistoryRow]:
    data = signed_get(http, ledger_url, identity, f"/v1/accounts/{identity.public_hex}/history?limit=1000")
    items = data.get("entries", data.get("history", [])) if isinstance(data, dict) else data
    rows = []
    for item in items or []:
        rows.append(HistoryRow(
            when_ms=int(item.get("created_ms", item.get("timestamp_ms", 0)) or 0),
            kind=str(item.get("kind", "")),
            delta=int(item.get("delta", item.get("amount", 0)) or 0),
            epoch=item.get("epoch"),
            ref=str(item.get("ref", "")),
        ))
    return rows


@dataclass
class TicketSpend:
    ticket_id: str
    steps: int = 0
    tokens: int = 0
    charged: int = 0  # sum of receipt prices
    settled: int = 0  # of which in receipts the ledger has paid


def fetch_ticket_spending(http: httpx.Client, ledger_url: str, identity: Identity) -> list[TicketSpend]:
    """What nodes charged this client's tickets, from the receipts they filed (public data)."""
    data = signed_get(http, ledger_url, identity, f"/v1/receipts?client={identity.public_hex}&limit=1000")
    by_ticket: dict[str, TicketSpend] = {}
    for r in data if isinstance(data, list) else []:
        tid = str(r.get("ticket_id") or "")
        if not tid:
            continue
        t = by_ticket.setdefault(tid, TicketSpend(tid))
        t.steps += 1
        t.tokens += int(r.get("tokens", 0))
        t.charged += int(r.get("price", 0))
        if r.get("status") == "paid":
            t.settled += int(r.get("price", 0))
    return list(by_ticket.values())


def spent_on_tickets(account: AccountView, history: list[HistoryRow]) -> int:
    """Credits paid to nodes through tickets: escrowed − refunded − still in escrow."""
    escrowed = -sum(r.delta for r in history if r.kind == "escrow")
    refunded = sum(r.delta for r in history if r.kind == "refund")
    return max(0, escrowed - refunded - account.escrow)


def render(account: AccountView, history: list[HistoryRow], console: Console, limit: int,
           tickets: list[TicketSpend] | None = None) -> None:
    summary = Table(title=f"account {account.key[:16]}…", show_header=True)
    for col in ("balance", "in escrow", "spent on priority", "earned", "slashed"):
        summary.add_column(col, justify="right")
    summary.add_row(str(account.balance), str(account.escrow), str(spent_on_tickets(account, history)),
                    str(account.earned), str(account.slashed))
    console.print(summary)
    table = Table(title="history (newest first)")
    table.add_column("time (UTC)")
    table.add_column("kind")
    table.add_column("credits", justify="right")
    table.add_column("epoch", justify="right")
    table.add_column("reference")
    newest = sorted(history, key=lambda r: r.when_ms, reverse=True)[:limit]
    for row in newest:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(row.when_ms / 1000)) if row.when_ms else "-"
        table.add_row(when, row.kind, f"{row.delta:+d}", "-" if row.epoch is None else str(row.epoch), row.ref)
    if not newest:
        table.add_row("-", "no entries yet", "", "", "")
    console.print(table)
    if tickets:
        spend = Table(title="priority spending per ticket (from nodes' receipts)")
        for col in ("ticket", "steps", "tokens", "charged", "settled"):
            spend.add_column(col, justify="left" if col == "ticket" else "right")
        for t in tickets:
            spend.add_row(t.ticket_id[:16] + "…", str(t.steps), str(t.tokens), str(t.charged), str(t.settled))
        console.print(spend)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="corolla wallet", description=__doc__.splitlines()[0])
    p.add_argument("--ledger", required=True, help="ledger URL, e.g. http://127.0.0.1:8700")
    p.add_argument("--key", default=None, help="the account's Ed25519 key file (default: $COROLLA_KEY or ~/.corolla/identity.key)")
    p.add_argument("--limit", type=int, default=50, help="show at most this many history entries (default 50)")
    p.add_argument("--width", type=int, default=None, help="table width in characters (default: the terminal's)")
    p.add_argument("--withdraw", type=int, default=0, metavar="N",
                   help="first move N credits on-chain (needs a bound EVM address); `corolla claim` "
                        "pays them out after the next epoch")
    return p


def withdraw(http: httpx.Client, ledger_url: str, identity: Identity, amount: int) -> None:
    """Ask the ledger to move `amount` credits to the on-chain claimable total (signed POST)."""
    import json

    body = json.dumps({"amount": amount}).encode()
    headers = sign_request(identity, "POST", "/v1/withdrawals", body)
    headers["content-type"] = "application/json"
    try:
        resp = http.post(ledger_url.rstrip("/") + "/v1/withdrawals", content=body, headers=headers)
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        raise WalletError(f"cannot reach the ledger at {ledger_url}: {exc}") from None
    if resp.status_code >= 400:
        try:
            detail = resp.json().get("detail", resp.text)
        except ValueError:
            detail = resp.text
        raise WalletError(f"withdrawal refused: {str(detail)[:200]}")


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        identity = Identity.load(args.key or default_key_path())
    except KeyFileError as exc:
        print(f"corolla wallet: {exc}", file=sys.stderr)
        return 2
    console = Console(width=args.width)
    try:
        with httpx.Client(timeout=10.0) as http:
            if args.withdraw:
                if args.withdraw < 0:
                    raise WalletError("--withdraw takes a positive number of credits")
                withdraw(http, args.ledger, identity, args.withdraw)
                console.print(f"withdrew {args.withdraw} credits: claimable on-chain after the next epoch")
            account = fetch_account(http, args.ledger, identity)
            history = fetch_history(http, args.ledger, identity)
            tickets = fetch_ticket_spending(http, args.ledger, identity)
    except WalletError as exc:
        print(f"corolla wallet: {exc}", file=sys.stderr)
        return 2
    render(account, history, console, args.limit, tickets)
    return 0
