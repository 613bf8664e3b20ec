"""Priority under load: does paying keep a client's latency near unloaded while free clients hammer?

One process tree on 127.0.0.1: a DHT peer, a ledger (grants the paying client credits), one
node serving every block of a small Llama, a worker process running N free clients that
generate continuously through inference sessions (or, with --free-bulk K, K of them send
bulk forwards back to back), and this process as the paying client.

Measured in one run, side by side:
- the paying client's per-token latency alone (unloaded) and under the free clients' load
  (`paying_latency_ratio` = loaded / unloaded, medians). The two are measured in
  alternating rounds (unloaded, loaded, loaded, unloaded, ...): for an unloaded round the
  free clients pause between two of their steps, so whatever else this shared machine is
  doing affects both sides alike. Both sides run the same code (one inference session per
  round, its first steps unmeasured warm-up);
- the same client without a ticket under the same load (`free_latency_ratio`), to show what
  the ticket bought;
- the free clients' aggregate tokens/s while running, whether each completed its
  generation (`free_clients_completed`), and how busy they kept the node (its CPU use and
  the time a request without ticket waits there).

    python benchmarks/priority.py [--free-clients 8] [--tokens 100] [--rounds 4] [--json]

With --json the last line is one JSON object with at least paying_latency_ratio and
free_clients_completed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
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


def run_session(swarm: Any, hidden_size: int, tokens: int, prompt: int = 8, warmup: int = 5) -> Steps:
    """One inference session: a prompt, `warmup` unmeasured steps, then `tokens` measured
    single-position steps. Per step: the client's wall time and the time the node reports
    between reading the request and replying (queueing + compute + receipt)."""
    import torch

    from client.inference_session import InferenceSession

    steps = Steps()
    with InferenceSession(swarm, max_length=prompt + warmup + tokens + 1) as session:
        session.step(torch.randn(1, prompt, hidden_size))
        x = torch.randn(1, 1, hidden_size)
        for i in range(warmup + tokens):
            started = time.perf_counter()
            session.step(x)
            if i >= warmup:
                steps.seconds.append(time.perf_counter() - started)
                steps.node_ms.append(sum(session.last_compute_ms))
    return steps


@dataclass
class Steps:
    seconds: list[float] = field(default_factory=list)
    node_ms: list[float] = field(default_factory=list)

    def extend(self, other: Steps) -> None:
        self.seconds += other.seconds
        self.node_ms += other.node_ms

    @property
    def median_ms(self) -> float:
        return statistics.median(self.seconds) * 1e3


def _abba(rounds: int) -> list[str]:
    """unloaded, loaded, loaded, unloaded, ...: a linear drift of the machine cancels out."""
    pairs = [("unloaded", "loaded") if i % 2 == 0 else ("loaded", "unloaded") for i in range(rounds)]
    return [phase for pair in pairs for phase in pair]


def free_worker(args: argparse.Namespace) -> int:
    """Subprocess: N free clients, each one session of --free-tokens steps, as fast as it can;
    the last --free-bulk of them instead send --free-tokens // 8 bulk forwards of
    --bulk-shape (batch × sequence) each, back to back.

    While the file --pause exists every client waits before its next call (the paying
    client's unloaded rounds); the time spent waiting is not counted in its throughput."""
    model_dir, peers, out, pause = Path(args.model), args.peers.split(","), Path(args.out), Path(args.pause)
    swarm, hidden = connect(model_dir, peers, None)
    started_evt = [threading.Event() for _ in range(args.free_clients)]
    results: list[dict[str, Any]] = [{} for _ in range(args.free_clients)]

    batch, seq = (int(n) for n in args.bulk_shape.split("x"))

    def client(i: int) -> None:
        import torch

        from client.inference_session import InferenceSession
        from client.remote_sequence import RemoteBlocks

        done, t0, paused, steps = 0, time.perf_counter(), 0.0, []
        bulk = i >= args.free_clients - args.free_bulk
        try:
            with contextlib.ExitStack() as stack:
                if bulk:
                    call, calls = RemoteBlocks(swarm).run_forward, args.free_tokens // 8
                    x = torch.randn(batch, seq, hidden)
                else:
                    session = stack.enter_context(InferenceSession(swarm, max_length=args.free_tokens + 9))
                    session.step(torch.randn(1, 8, hidden))
                    call, calls, x = session.step, args.free_tokens, torch.randn(1, 1, hidden)
                started_evt[i].set()
                for _ in range(calls):
                    t = time.perf_counter()
                    while pause.exists():
                        time.sleep(0.005)
                    paused += time.perf_counter() - t
                    t = time.perf_counter()
                    call(x)
                    steps.append(time.perf_counter() - t)
                    done += x.shape[0] * x.shape[1]
            results[i] = {"tokens": done, "seconds": time.perf_counter() - t0 - paused, "completed": True,
                          "median_step_s": statistics.median(steps)}
        except Exception as exc:  # reported, not raised: the benchmark counts completions
            results[i] = {"tokens": done, "seconds": time.perf_counter() - t0 - paused, "completed": False,
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
        node = spawn(["-m", "cli.main", "node", str(model_dir), "--blocks", f"0:{args.layers}",
                      "--initial-peers", *peers, *ledger_args, "--torch-threads", "1",
                      "--ready-file", str(tmp / "node.json")], tmp / "node.log")
        procs.append(node)
        wait_ready(tmp / "node.json", node)

        policy = SpendingPolicy(ledger_url, payer, budget=10**8, ticket_cap=10**7, bid_per_token=args.bid)
        paying, hidden = connect(model_dir, peers, payer_key, policy)
        run_session(paying, hidden, 10)  # warm-up: route, connections, ticket

        out, pause = tmp / "free.json", tmp / "free.pause"
        worker = spawn([__file__, "--free-worker", "--model", str(model_dir), "--peers", ",".join(peers),
                        "--free-clients", str(args.free_clients), "--free-tokens", str(args.free_tokens),
                        "--free-bulk", str(args.free_bulk), "--bulk-shape", args.bulk_shape,
                        "--out", str(out), "--pause", str(pause)], tmp / "free.log")
        procs.append(worker)
        hammering = tmp / "free.json.hammering"
        deadline = time.monotonic() + 180
        while not hammering.exists() and worker.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)

        unloaded, loaded, node_cpu_s, loaded_s = Steps(), Steps(), 0.0, 0.0
        per_round = max(args.tokens // args.rounds, 1)
        for phase in _abba(args.rounds):
            if phase == "unloaded":
                pause.touch()
                time.sleep(0.3)  # the free steps in flight finish
                unloaded.extend(run_session(paying, hidden, per_round))
            else:
                pause.unlink(missing_ok=True)
                time.sleep(0.5)  # the load settles
                cpu, started = cpu_seconds(node.pid), time.monotonic()
                loaded.extend(run_session(paying, hidden, per_round))
                node_cpu_s += cpu_seconds(node.pid) - cpu
                loaded_s += time.monotonic() - started
        pause.unlink(missing_ok=True)
        time.sleep(0.5)
        loaded_running = worker.poll() is None

        unpaid, _ = connect(model_dir, peers, payer_key, None)
        unpaid_loaded = run_session(unpaid, hidden, args.tokens)
        unpaid_running = worker.poll() is None
        unpaid.close()

        worker.wait(args.free_timeout)
        free = json.loads(out.read_text()) if out.exists() else []
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

    free_tokens = sum(f.get("tokens", 0) for f in free)
    free_seconds = max((f.get("seconds", 0.0) for f in free), default=0.0)
    free_tps = free_tokens / free_seconds if free_seconds else 0.0
    return {
        "free_clients": args.free_clients,
        "free_bulk_clients": args.free_bulk,
        "paying_unloaded_ms_per_token": round(unloaded.median_ms, 3),
        "paying_loaded_ms_per_token": round(loaded.median_ms, 3),
        "paying_latency_ratio": round(loaded.median_ms / unloaded.median_ms, 3),
        "paying_p90_ratio": round(_p90(loaded.seconds) / _p90(unloaded.seconds), 3),
        "paying_node_ms_unloaded": round(statistics.median(unloaded.node_ms), 3),
        "paying_node_ms_loaded": round(statistics.median(loaded.node_ms), 3),
        "unpaid_loaded_ms_per_token": round(unpaid_loaded.median_ms, 3),
        "unpaid_node_ms_loaded": round(statistics.median(unpaid_loaded.node_ms), 3),
        "free_latency_ratio": round(unpaid_loaded.median_ms / unloaded.median_ms, 3),
        "load_active_during_measurement": bool(loaded_running and unpaid_running),
        "free_clients_completed": sum(1 for f in free if f.get("completed")),
        "free_tokens_per_s": round(free_tps, 1),
        # CPU the node process used while the paying client was measured under load (1.0 = one
        # core): its compute thread saturated means the load was real
        "node_cpu_cores_loaded": round(node_cpu_s / loaded_s, 2),
        "free_errors": [f["error"] for f in free if "error" in f][:3],
        "model": f"llama layers={args.layers} hidden={args.hidden}",
        "bulk_shape": args.bulk_shape if args.free_bulk else None,
    }


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process and all its threads so far (Linux; 0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _p90(xs: list[float]) -> float:
    return sorted(xs)[int(0.9 * (len(xs) - 1))]


def main() -> int:
    p = argparse.ArgumentParser(description="Paying vs free clients on one loaded node.")
    p.add_argument("--free-clients", type=int, default=8, help="free clients hammering the node (default 8)")
    p.add_argument("--tokens", type=int, default=100,
                   help="steps the paying client measures unloaded, and as many loaded (default 100)")
    p.add_argument("--rounds", type=int, default=4,
                   help="alternating unloaded/loaded rounds the --tokens are split into (default 4)")
    p.add_argument("--free-tokens", type=int, default=400, help="steps each free client generates (a bulk client sends one forward per 8)")
    p.add_argument("--free-bulk", type=int, default=0,
                   help="free clients sending bulk forwards instead of generating (default 0)")
    p.add_argument("--bulk-shape", default="1x128", help="batch x sequence of a bulk forward (default 1x128)")
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
    p.add_argument("--pause", help=argparse.SUPPRESS)
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
        ("node CPU under load", f"{result['node_cpu_cores_loaded']:.2f} cores", ""),
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
