"""Ledger throughput on this machine: receipts ingested per second over HTTP (batches of 100)
on SQLite and on a throw-away PostgreSQL cluster, and the time to close an epoch of 100k
receipts. Prints a table; with --json the last line is one JSON object.

    .venv/bin/python benchmarks/ledger.py [--receipts 6000] [--epoch-receipts 100000] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from protocol.identity import Identity  # noqa: E402
from protocol.request_auth import sign_request  # noqa: E402
from tests.ledger.harness import LedgerProcess, PostgresCluster, make_receipt, pg_bin, small_manifest  # noqa: E402


def ingest_rate(db_url: str, workdir: Path, n: int, senders: int, verify_workers: int) -> float:
    server = LedgerProcess(db_url, workdir, args=["--verify-workers", str(verify_workers)]).start()
    try:
        manifest = small_manifest()
        nodes = [Identity.generate() for _ in range(senders)]
        client = Identity.generate()
        server.client(nodes[0]).post("/v1/manifests", manifest.to_json()).raise_for_status()
        batches: list[list[list[dict]]] = [[] for _ in nodes]
        for s, node in enumerate(nodes):
            receipts = [make_receipt(node, client, manifest, step=i).to_json() for i in range(n // senders)]
            batches[s] = [receipts[i:i + 100] for i in range(0, len(receipts), 100)]
        clients = [server.client(node) for node in nodes]
        clients[0].post("/v1/receipts", {"receipts": batches[0].pop()}).raise_for_status()  # warm-up
        bodies = [[json.dumps({"receipts": batch}).encode() for batch in per] for per in batches]  # not timed
        accepted = [0] * senders

        def send(s: int) -> None:
            c = clients[s]
            for raw in bodies[s]:
                headers = {"content-type": "application/json",
                           **sign_request(c.identity, "POST", "/v1/receipts", raw)}
                body = c.http.post("/v1/receipts", content=raw, headers=headers).json()
                accepted[s] += len(body["accepted"])

        threads = [threading.Thread(target=send, args=(s,)) for s in range(senders)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - t0
        return sum(accepted) / elapsed
    finally:
        server.stop()


def ingest_cpu_us_per_receipt(workdir: Path, n: int = 2000) -> float:
    """CPU time (not wall time) the ledger spends per receipt in ingest(), in-line verification,
    SQLite: a figure that does not depend on how busy the machine is."""
    from ledger.app import build_context
    from ledger.config import Settings
    from ledger.receipts_ingest import ingest, store_manifest

    ctx = build_context(Settings(db_url=f"sqlite:///{workdir / 'cpu.db'}", key_file=str(workdir / "cpu.key")))
    manifest = small_manifest()
    store_manifest(ctx, manifest.to_json())
    node, client = Identity.generate(), Identity.generate()
    items = [make_receipt(node, client, manifest, step=i).to_json() for i in range(n)]
    items = json.loads(json.dumps(items))
    t0 = time.process_time()
    for i in range(0, n, 100):
        ingest(ctx, items[i:i + 100])
    cpu = time.process_time() - t0
    ctx.engine.dispose()
    return cpu / n * 1e6


def epoch_close_seconds(db_url: str, workdir: Path, n: int) -> float:
    from ledger.app import build_context
    from ledger.config import Settings
    from ledger.db import session_scope
    from ledger.epochs import close_epoch
    from ledger.models import Manifest, Receipt

    ctx = build_context(Settings(db_url=db_url, key_file=str(workdir / "epoch.key"), grace_period_s=0))
    manifest = small_manifest()
    node_ids = [Identity.generate() for _ in range(50)]
    client = Identity.generate()
    raw = make_receipt(node_ids[0], client, manifest).to_bytes()
    now = int(time.time() * 1000)
    with session_scope(ctx.engine) as session:
        session.add(Manifest(hash=manifest.manifest_hash().hex(), num_blocks=4, block_flops_per_token=2_000_000,
                             body="{}", created_ms=now))
    for start in range(0, n, 10_000):
        rows = [{
            "id": os.urandom(32).hex(), "node_key": node_ids[i % 50].public_hex, "client_key": client.public_hex,
            "model": manifest.manifest_hash().hex(), "block_start": 0, "block_end": 2, "kind": 3, "batch": 1,
            "tokens": 8, "ticket_id": "", "price": 0, "timestamp_ms": now, "value": 32, "acked": True,
            "ingested_ms": now - 1000, "sample_draw": 0.5, "verdict_result": 0, "status": "pending",
            "epoch": None, "raw": raw,
        } for i in range(start, min(n, start + 10_000))]
        with session_scope(ctx.engine) as session:
            session.execute(Receipt.__table__.insert(), rows)  # type: ignore[attr-defined]
    t0 = time.perf_counter()
    summary = close_epoch(ctx)
    elapsed = time.perf_counter() - t0
    assert summary.receipts_paid == n, summary
    ctx.engine.dispose()
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--receipts", type=int, default=6000, help="receipts to ingest per database")
    parser.add_argument("--senders", type=int, default=2, help="concurrent submitting nodes")
    parser.add_argument("--verify-workers", type=int, default=2, help="ledger signature-check processes")
    parser.add_argument("--epoch-receipts", type=int, default=100_000, help="receipts in the timed epoch")
    parser.add_argument("--no-postgres", action="store_true", help="skip PostgreSQL")
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="corolla-bench-"))
    out: dict[str, float | None] = {}
    out["sqlite_receipts_per_s"] = ingest_rate(f"sqlite:///{tmp / 'ingest.db'}", tmp / "s", args.receipts,
                                               args.senders, args.verify_workers)
    (tmp / "c").mkdir()
    cpu_us = ingest_cpu_us_per_receipt(tmp / "c")
    out["ingest_cpu_us_per_receipt"] = cpu_us
    out["sqlite_receipts_per_cpu_s"] = 1e6 / cpu_us
    out["epoch_close_s"] = epoch_close_seconds(f"sqlite:///{tmp / 'epoch.db'}", tmp, args.epoch_receipts)
    out["postgres_receipts_per_s"] = None
    out["postgres_epoch_close_s"] = None
    if not args.no_postgres and pg_bin() is not None:
        cluster = PostgresCluster().start()
        try:
            out["postgres_receipts_per_s"] = ingest_rate(cluster.new_database(), tmp / "p", args.receipts,
                                                         args.senders, args.verify_workers)
            out["postgres_epoch_close_s"] = epoch_close_seconds(cluster.new_database(), tmp, args.epoch_receipts)
        finally:
            cluster.stop()
    load = os.getloadavg()[0]
    from protocol.sodium import BACKEND

    print(f"{'figure':<30}{'value':>12}")
    for key, value in out.items():
        print(f"{key:<30}{'n/a' if value is None else f'{value:,.2f}':>12}")
    out["load_average"] = load
    print(f"(receipts: {args.receipts} per database, batches of 100, {args.senders} senders, "
          f"{args.verify_workers} verify workers, Ed25519 by {BACKEND}; epoch: {args.epoch_receipts} receipts; {os.cpu_count()} cores, "
          f"load average {load:.1f} — wall-clock rates fall when other work shares the cores)")
    if args.json:
        print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
