"""`corolla ledger serve | check | close-epoch`."""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import sys
from pathlib import Path

from ledger.config import Settings


def _db_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--db", dest="db_url", help="database URL: sqlite:///FILE (default sqlite:///corolla-ledger.db) "
                   "or postgresql://user@host:port/db")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="corolla ledger", description="The Corolla ledger service.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{serve,check,close-epoch}")

    serve = sub.add_parser("serve", help="run the HTTP service (JSON API, /docs, /dashboard)")
    _db_arg(serve)
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8470, help="port to bind; 0 picks a free one (default 8470)")
    serve.add_argument("--key", dest="key_file", help="ledger Ed25519 key file, created on first use "
                       "(default .corolla/ledger.key)")
    serve.add_argument("--ready-file", help="write {url, pid, ledger_key} as JSON here once serving")
    serve.add_argument("--epoch-minutes", type=float, help="close an epoch every N minutes; 0 disables (default 10)")
    serve.add_argument("--grace-s", dest="grace_period_s", type=float,
                       help="seconds before an unsampled receipt becomes payable (default 600)")
    serve.add_argument("--flops-per-credit", type=int, help="block-FLOPs paid by one credit (default 1000000)")
    serve.add_argument("--slash-multiple", type=int, help="slash = this × value claimed in the epoch (default 2)")
    serve.add_argument("--sample-rate", type=float, help="share of receipts offered to verifiers (default 1.0)")
    serve.add_argument("--verifier", dest="verifier_keys", action="extend", nargs="+", metavar="KEY",
                       help="hex Ed25519 key with the verifier role (repeatable)")
    serve.add_argument("--admin", dest="admin_keys", action="extend", nargs="+", metavar="KEY",
                       help="hex Ed25519 key allowed to grant roles (repeatable)")
    serve.add_argument("--grant", dest="grants", action="extend", nargs="+", metavar="KEY:AMOUNT",
                       help="dev faucet: mint AMOUNT credits to KEY once (repeatable)")
    serve.add_argument("--allow-unacked", action="store_true",
                       help="also pay receipts without the client's counter-signature")
    serve.add_argument("--verify-workers", type=int, help="processes verifying receipt signatures (default 0)")
    serve.add_argument("--chain-rpc", help="EVM JSON-RPC URL: anchor epoch roots there")
    serve.add_argument("--chain-key", dest="chain_key_file", help="EVM key file that posts epoch roots and signs "
                       "binding attestations (POST /v1/bindings/attest; the NodeRegistry attester)")
    serve.add_argument("--chain-addresses", dest="chain_addresses_file",
                       help="contract addresses file written by `corolla chain deploy`")
    serve.add_argument("--anchor-retry-s", type=float, help="retry anchoring closed but unanchored epochs every N "
                       "seconds while the chain is unreachable; 0 disables (default 30)")
    serve.add_argument("--log-level", default="info", help="logging level (default info)")

    check = sub.add_parser("check", help="prove the journal invariants; exit 1 if any is violated")
    _db_arg(check)

    close = sub.add_parser("close-epoch", help="close one epoch now and print its summary")
    _db_arg(close)
    close.add_argument("--key", dest="key_file", help="ledger key file (default .corolla/ledger.key)")
    close.add_argument("--grace-s", dest="grace_period_s", type=float, help="grace period in seconds (default 600)")
    close.add_argument("--allow-unacked", action="store_true", help="also pay receipts without a counter-signature")
    close.add_argument("--chain-rpc", help="EVM JSON-RPC URL: anchor the root there")
    close.add_argument("--chain-key", dest="chain_key_file", help="EVM key file that posts epoch roots")
    close.add_argument("--chain-addresses", dest="chain_addresses_file", help="contract addresses file")
    return parser


def _settings(args: argparse.Namespace) -> Settings:
    fields = set(Settings.model_fields)
    values = {k: v for k, v in vars(args).items() if k in fields and v is not None}
    if getattr(args, "allow_unacked", False):
        values["require_client_signature"] = False
    return Settings(**values)


def _serve(settings: Settings, args: argparse.Namespace) -> int:
    import uvicorn

    from ledger.app import create_app

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        sock = socket.socket(socket.AF_INET6 if ":" in args.host else socket.AF_INET)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((args.host, args.port))
    except OSError as exc:
        print(f"corolla ledger: cannot bind {args.host}:{args.port}: {exc.strerror}", file=sys.stderr)
        return 2
    from sqlalchemy.exc import ArgumentError, OperationalError

    from protocol.identity import KeyFileError

    try:
        app = create_app(settings)
    except (OperationalError, ArgumentError, KeyFileError, ValueError) as exc:
        sock.close()
        print(f"corolla ledger: cannot start: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2
    host, port = sock.getsockname()[:2]
    url = f"http://{host}:{port}"
    ready_file = args.ready_file

    class _Server(uvicorn.Server):
        async def startup(self, sockets=None):  # type: ignore[no-untyped-def]
            await super().startup(sockets)
            if ready_file:
                tmp = Path(ready_file + ".tmp")
                tmp.write_text(json.dumps({"url": url, "pid": os.getpid(),
                                           "ledger_key": app.state.ctx.identity.public_hex}))
                os.replace(tmp, ready_file)

    config = uvicorn.Config(app, log_level=args.log_level.lower(), access_log=False)
    print(f"corolla ledger serving on {url} (docs {url}/docs, dashboard {url}/dashboard)", file=sys.stderr)
    _Server(config).run(sockets=[sock])
    return 0


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = _settings(args)
        settings.parsed_grants()
        _ = settings.verifier_key_bytes, settings.admin_key_bytes
    except ValueError as exc:
        print(f"corolla ledger: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2
    if args.command == "serve":
        return _serve(settings, args)

    from sqlalchemy.exc import ArgumentError, OperationalError

    from ledger.db import make_engine, migrate

    try:
        engine = make_engine(settings.db_url)
        migrate(engine)
    except (OperationalError, ArgumentError, ValueError) as exc:
        print(f"corolla ledger: cannot open database {settings.db_url}: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2
    if args.command == "check":
        from sqlmodel import Session

        from ledger.journal import check_invariants

        with Session(engine) as session:
            report = check_invariants(session)
        print(f"accounts {report.accounts}, journal entries {report.entries}, minted {report.minted}, "
              f"burned {report.burned}, held {report.held}, escrow {report.escrow}, slashed {report.slashed}")
        for problem in report.problems:
            print(f"VIOLATION: {problem}")
        print("books are consistent" if report.ok else f"{len(report.problems)} invariant(s) violated")
        return 0 if report.ok else 1

    from ledger.app import build_context
    from ledger.epochs import EpochBusy, close_epoch

    logging.basicConfig(level="INFO", format="%(message)s")
    engine.dispose()
    ctx = build_context(settings)
    try:
        summary = close_epoch(ctx)
    except EpochBusy as exc:
        print(f"corolla ledger: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(summary.__dict__))
    return 0
