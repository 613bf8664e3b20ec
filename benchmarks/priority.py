"""Priority under load: does paying keep a client's latency near unloaded while free clients hammer?

One process tree on 127.0.0.1: a DHT peer, a ledger (grants the paying client credits), one
node serving every block of a small Llama, a worker process running N free clients that
generate continuously through inference sessions, and this process as the paying client.

Measured in one run, side by side:
- the paying client's per-token latency alone (unloaded, before and after the load; the
  faster is used), then under the free clients' load (`paying_latency_ratio` = loaded /
  unloaded, medians);
- the same client without a ticket under the same load (`free_latency_ratio`), to show what
  the ticket bought;
- the free clients' aggregate tokens/s and whether each completed its generation
  (`free_clients_completed`).

    python benchmarks/priority.py [--free-clients 8] [--tokens 60] [--json]

With --json the last line is one JSON object with at least paying_latency_ratio and
free_clients_completed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
PYTHON = sys.executable


def wait_ready(path: Path, proc: subprocess.Popen[bytes], timeout: float = 180.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            return json.loads(path.read_text())  # type: ignore[no-any-return]
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited with {proc.returncode} before it was ready")
        time.sleep(0.1)
    raise TimeoutError(f"{path} did not appear in {timeout} s")


def spawn(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen([PYTHON, *args], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false"})


# ----- clients ------------------------------------------------------------------------------


def connect(model_dir: Path, peers: list[str], key_file: Path | None, spending: Any = None) -> Any:
    """A SwarmContext (connection + router) without the local embedding/head: blocks only."""
    from client.routing import Router
    from client.swarm_connection import SwarmConnection
    from client.swarm_context import SwarmContext
    from models.manifest_builder import load_manifest
    manifest = load_manifest(model_dir)
    conn = SwarmConnection(peers)
    manifest_hash = manifest.manifest_hash()
    router = Router(lambda: conn.announcements(manifest_hash), manifest.num_blocks)
    swarm = SwarmContext(conn, router, manifest_hash, manifest.num_blocks)
    if key_file is not None:  # verify and counter-sign receipts, as from_pretrained(key=...) does
        from client.receipt_book import ReceiptBook

        swarm.receipts = ReceiptBook.from_key_file(str(key_file))
        swarm.client_key = swarm.receipts.public_key
    if spending is not None:
        swarm.spending = spending
    return swarm, manifest.hidden_size


def run_session(swarm: Any, hidden_size: int, tokens: int, prompt: int = 8) -> list[float]:
    """One inference session: a prompt, then `tokens` single-position steps; per-step seconds."""
    import torch

    from client.inference_session import InferenceSession

    latencies = []
    with InferenceSession(swarm, max_length=prompt + tokens + 1) as session:
        session.step(torch.randn(1, prompt, hidden_size))
        x = torch.randn(1, 1, hidden_size)
        for _ in range(tokens):
            started = time.perf_counter()
            session.step(x)
            latencies.append(time.perf_counter() - started)
    return latencies


def free_worker(args: argparse.Namespace) -> int:
    """Subprocess: N free clients, each one session of --free-tokens steps, as fast as it can."""
    model_dir, peers, out = Path(args.model), args.peers.split(","), Path(args.out)
    swarm, hidden = connect(model_dir, peers, None)
    started_evt = [threading.Event() for _ in range(args.free_clients)]
    results: list[dict[str, Any]] = [{} for _ in range(args.free_clients)]

    def client(i: int) -> None:
        import torch

        from client.inference_session import InferenceSession

        done, t0, steps = 0, time.perf_counter(), []
        try:
            with InferenceSession(swarm, max_length=args.free_tokens + 9) as session:
                session.step(torch.randn(1, 8, hidden))
                started_evt[i].set()
                x = torch.randn(1, 1, hidden)
                for _ in range(args.free_tokens):
                    t = time.perf_counter()
                    session.step(x)
                    steps.append(time.perf_counter() - t)
                    done += 1
            results[i] = {"tokens": done, "seconds": time.perf_counter() - t0, "completed": True,
                          "median_step_s": statistics.median(steps)}
        except Exception as exc:  # reported, not raised: the benchmark counts completions
            results[i] = {"tokens": done, "seconds": time.perf_counter() - t0, "completed": False,
                          "error": f"{type(exc).__name__}: {exc}"}
            started_evt[i].set()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(args.free_clients)]
    for t in threads:
        t.start()
    for e in started_evt:
        e.wait(120)
    (out.parent / (out.name + ".hammering")).write_text("1")
    for t in threads:
        t.join()
    out.write_text(json.dumps(results))
    swarm.close()
    return 0


# ----- orchestration ------------------------------------------------------------------------


def measure(args: argparse.Namespace) -> dict[str, Any]:
    from client.spending import SpendingPolicy
    from models.make_model import make_model
    from protocol.identity import Identity

    tmp = Path(tempfile.mkdtemp(prefix="corolla-priority-bench-"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        model_dir = make_model("llama", tmp / "model", layers=args.layers, hidden=args.hidden, seed=0)
        payer_key, node_key = tmp / "payer.key", tmp / "node.key"
        payer = Identity.generate()
        payer.save(payer_key)

        procs.append(spawn(["-m", "cli.main", "dht", "--ready-file", str(tmp / "dht.json")], tmp / "dht.log"))
        peers = wait_ready(tmp / "dht.json", procs[-1])["maddrs"]
        procs.append(spawn(["-m", "cli.main", "ledger", "serve", "--db", f"sqlite:///{tmp / 'ledger.db'}",
                            "--port", "0", "--key", str(tmp / "ledger.key"), "--epoch-minutes", "0",
                            "--grant", f"{payer.public_hex}:{10**9}", "--log-level", "warning",
                            "--ready-file", str(tmp / "ledger.json")], tmp / "ledger.log"))
        ledger_url = wait_ready(tmp / "ledger.json", procs[-1])["url"]
        ledger_args = [] if args.plain_node else ["--key", str(node_key), "--ledger", ledger_url]
        procs.append(spawn(["-m", "cli.main", "node", str(model_dir), "--blocks", f"0:{args.layers}",
                            "--initial-peers", *peers, *ledger_args, "--torch-threads", "1",
                            "--ready-file", str(tmp / "node.json")], tmp / "node.log"))
        wait_ready(tmp / "node.json", procs[-1])

        policy = SpendingPolicy(ledger_url, payer, budget=10**8, ticket_cap=10**7, bid_per_token=args.bid)
        paying, hidden = connect(model_dir, peers, payer_key, policy)
        run_session(paying, hidden, 10)  # warm-up: route, connections, ticket
        unloaded = run_session(paying, hidden, args.tokens)

        out = tmp / "free.json"
        worker = spawn([__file__, "--free-worker", "--model", str(model_dir), "--peers", ",".join(peers),
                        "--free-clients", str(args.free_clients), "--free-tokens", str(args.free_tokens),
                        "--out", str(out)], tmp / "free.log")
        procs.append(worker)
        hammering = tmp / "free.json.hammering"
        deadline = time.monotonic() + 180
        while not hammering.exists() and worker.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)  # let the load settle
        loaded = run_session(paying, hidden, args.tokens)
        loaded_running = worker.poll() is None

        unpaid, _ = connect(model_dir, peers, payer_key, None)
        unpaid_loaded = run_session(unpaid, hidden, args.tokens)
        unpaid_running = worker.poll() is None
        unpaid.close()

        worker.wait(args.free_timeout)
        free = json.loads(out.read_text()) if out.exists() else []
        unloaded_after = run_session(paying, hidden, args.tokens)  # the machine may have changed meanwhile
        paying.close()
        policy.close()
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(20)
                except subprocess.TimeoutExpired:
                    p.kill()

    # the faster of the two unloaded runs (before and after the load): the conservative ratio
    unloaded = min(unloaded, unloaded_after, key=statistics.median)
    unloaded_ms = statistics.median(unloaded) * 1e3
    loaded_ms = statistics.median(loaded) * 1e3
    unpaid_ms = statistics.median(unpaid_loaded) * 1e3
    free_tokens = sum(f.get("tokens", 0) for f in free)
    free_seconds = max((f.get("seconds", 0.0) for f in free), default=0.0)
    return {
        "free_clients": args.free_clients,
        "paying_unloaded_ms_per_token": round(unloaded_ms, 3),
        "paying_loaded_ms_per_token": round(loaded_ms, 3),
        "paying_latency_ratio": round(loaded_ms / unloaded_ms, 3),
        "paying_p90_ratio": round(_p90(loaded) / _p90(unloaded), 3),
        "unpaid_loaded_ms_per_token": round(unpaid_ms, 3),
        "free_latency_ratio": round(unpaid_ms / unloaded_ms, 3),
        "load_active_during_measurement": bool(loaded_running and unpaid_running),
        "free_clients_completed": sum(1 for f in free if f.get("completed")),
        "free_tokens_per_s": round(free_tokens / free_seconds, 1) if free_seconds else 0.0,
        "free_errors": [f["error"] for f in free if "error" in f][:3],
        "model": f"llama layers={args.layers} hidden={args.hidden}",
    }


def _p90(xs: list[float]) -> float:
    return sorted(xs)[int(0.9 * (len(xs) - 1))]


def main() -> int:
    p = argparse.ArgumentParser(description="Paying vs free clients on one loaded node.")
    p.add_argument("--free-clients", type=int, default=8, help="free clients hammering the node (default 8)")
    p.add_argument("--tokens", type=int, default=60, help="steps the paying client measures per phase")
    p.add_argument("--free-tokens", type=int, default=400, help="steps each free client generates")
    p.add_argument("--free-timeout", type=float, default=300, help="seconds to wait for free clients to finish")
    p.add_argument("--layers", type=int, default=4, help="model layers, all served by the one node")
    p.add_argument("--hidden", type=int, default=256, help="model hidden size")
    p.add_argument("--bid", type=int, default=1, help="paying client's bid in credits per token")
    p.add_argument("--plain-node", action="store_true",
                   help="run the node without key and ledger: tickets are not honoured (baseline)")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    p.add_argument("--free-worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--peers", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.free_worker:
        return free_worker(args)
    result = measure(args)
    rows = [
        ("paying client, unloaded", f"{result['paying_unloaded_ms_per_token']:.2f} ms/token", "1.00x"),
        ("paying client, loaded", f"{result['paying_loaded_ms_per_token']:.2f} ms/token",
         f"{result['paying_latency_ratio']:.2f}x"),
        ("same client without ticket, loaded", f"{result['unpaid_loaded_ms_per_token']:.2f} ms/token",
         f"{result['free_latency_ratio']:.2f}x"),
        (f"{args.free_clients} free clients", f"{result['free_tokens_per_s']:.1f} tokens/s total",
         f"{result['free_clients_completed']}/{args.free_clients} completed"),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"priority benchmark ({result['model']}, 1 node, loopback)")
    for name, value, ratio in rows:
        print(f"  {name.ljust(width)}  {value:>22}  {ratio}")
    if not result["load_active_during_measurement"]:
        print("  warning: free clients finished before the loaded measurement ended; raise --free-tokens")
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
