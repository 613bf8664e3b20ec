"""What receipts cost: generation latency and forward throughput with receipts on vs off.

Two swarms of the same model run side by side in one invocation, each with its own DHT and
2 nodes (1 torch thread per process): "off" nodes have no identity (no hashing, Merkle
root, signing, outbox); "on" nodes sign every step and the client verifies, counter-signs
and acknowledges each receipt. Measurements alternate between the swarms so both see the
same machine load: each round times both back to back (off first in even rounds, on first
in odd ones), and the overheads are the medians of the per-round on/off ratios, so a load
change from other processes between rounds cancels out. Hashing and signing costs per MB
and per receipt come from benchmarks/receipts_hashing.py in the same run.

Wall time on a shared 2-core machine is noisy (identical swarms differ by 5-18 %), so the
run also accounts CPU time per process during every timed generation: the nanosecond
run time of each thread (/proc/<pid>/task/*/schedstat) of the client (split into its
generate thread, its event-loop thread, which also runs an inference session's receipt
checks, the receipt book's checker thread when it has one, and the rest), its p2pd
daemon, and each node with its p2pd daemon. The table shows CPU µs per generated token
for each, receipts off vs on, summed over all rounds: that says where the cost of
receipts is, independently of what else the machine was doing.

    .venv/bin/python benchmarks/receipts.py [--layers 8 --hidden 512 --tokens 32 --rounds 48] [--json]

With --json the last line is one JSON object with overhead_fraction (inference, on vs off)
and forward_overhead_fraction (medians of per-round ratios; `overhead_fraction_quartiles`
says how far the rounds spread and `overhead_fraction_ci95` how far that leaves the median
open: with 16 rounds it moved ±3 points between runs of two identical swarms, hence 48
shorter rounds by default), the same from the medians
of each swarm's timings (`*_of_medians`), and `cpu_us_per_token` ({"off"|"on": {part: µs}})
with `cpu_overhead_fraction` (all parts' CPU on vs off), and the in-process figures
(`node_receipt_us_per_token`, `node_receipt_fraction`, `client_check_us_per_receipt`).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, default=8, help="blocks of the benchmark Llama (default 8)")
    p.add_argument("--hidden", type=int, default=512, help="hidden size (default 512)")
    p.add_argument("--tokens", type=int, default=32, help="new tokens per generation (default 32)")
    p.add_argument("--rounds", type=int, default=48,
                   help="alternating timed rounds per swarm (default 48; the median of their ratios is kept)")
    p.add_argument("--batch", type=int, default=4, help="forward batch size (default 4)")
    p.add_argument("--seq", type=int, default=128, help="forward sequence length (default 128)")
    p.add_argument("--receipt-batch", type=int, default=None,
                   help="inference receipts a node may send together (default: the client's, 4)")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    return p.parse_args(argv)


def start_swarm(name: str, model: Path, layers: int, workdir: Path, stack: ExitStack,
                with_keys: bool) -> tuple[list[str], list[int]]:
    from cli.demo import split_blocks, start_service, wait_ready

    dht = start_service(f"{name}-dht", ["dht"], workdir)
    stack.callback(dht.stop)
    peers = wait_ready(dht).ready["maddrs"]
    nodes = []
    for i, (start, end) in enumerate(split_blocks(layers, 2)):
        extra = ["--key", str(workdir / f"{name}-node{i}.key"),
                 "--outbox", str(workdir / f"{name}-node{i}.outbox.sqlite")] if with_keys else []
        node = start_service(f"{name}-node{i}", ["node", str(model), "--blocks", f"{start}:{end}",
                                                 "--initial-peers", *peers, "--torch-threads", "1", *extra], workdir)
        stack.callback(node.stop)
        nodes.append(node)
    for node in nodes:
        wait_ready(node)
    return peers, [node.proc.pid for node in nodes]


# ----- CPU accounting ---------------------------------------------------------------------


def thread_cpu_ns(pid: int) -> dict[int, int]:
    """Run time in ns of each live thread of `pid` (first field of /proc/<pid>/task/<tid>/schedstat)."""
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError, ValueError, IndexError):
            out[int(task.name)] = int((task / "schedstat").read_text().split()[0])
    return out


def children(pid: int) -> list[int]:
    """Direct child processes of `pid` (a node's or a client's p2pd daemon)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry.name))
    return found


class CpuMeter:
    """CPU ns per part of one swarm (client threads, client p2pd, nodes and their p2pd)."""

    def __init__(self, client: Any, node_pids: list[int]):
        import os
        import threading

        conn = client.swarm.conn
        self.pid = os.getpid()
        self.client_threads = {threading.main_thread().native_id: "client generate thread",
                               conn._thread.native_id: "client event loop"}
        book = client.swarm.receipts
        for thread in getattr(getattr(book, "_checker", None), "_threads", ()):
            self.client_threads[thread.native_id] = "client receipt checker"
        self.processes = {"client p2pd": conn.dht.p2p._child.pid}
        for i, pid in enumerate(node_pids):
            self.processes[f"node{i}"] = pid
            for child in children(pid):
                self.processes[f"node{i} p2pd"] = child

    def snapshot(self) -> dict[str, int]:
        parts: dict[str, int] = {}
        for tid, ns in thread_cpu_ns(self.pid).items():
            label = self.client_threads.get(tid, "client other threads")
            parts[label] = parts.get(label, 0) + ns
        for label, pid in self.processes.items():
            parts[label] = sum(thread_cpu_ns(pid).values())
        return parts


def cpu_delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - before.get(k, 0) for k in after}


def timed(fn: Any, meter: CpuMeter | None = None, cpu: dict[str, int] | None = None) -> float:
    """Wall seconds of fn(); with a meter, adds each part's CPU ns to `cpu`."""
    before = meter.snapshot() if meter is not None else {}
    started = time.perf_counter()
    fn()
    elapsed = time.perf_counter() - started
    if meter is not None and cpu is not None:
        for part, ns in cpu_delta(before, meter.snapshot()).items():
            cpu[part] = cpu.get(part, 0) + ns
    return elapsed


def median_ci95(values: list[float]) -> tuple[float, float]:
    """Distribution-free 95 % confidence interval of the median (order statistics): how far
    the round-to-round noise of this machine leaves the overhead open."""
    ordered, n = sorted(values), len(values)
    k = max(0, int((n - 1.96 * n ** 0.5) / 2))
    return ordered[k], ordered[n - 1 - k]


def hashing_figures() -> dict[str, float]:
    from benchmarks import receipts_hashing

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        receipts_hashing.main(["--json", "--repeat", "5"])
    return json.loads(buffer.getvalue().strip().splitlines()[-1])


def in_process_figures(model: Path, layers: int, tokens: int, receipt_batch: int, workdir: Path) -> dict[str, Any]:
    from benchmarks import receipts_in_process

    return receipts_in_process.measure(model, layers, tokens, max(1, min(16, 512 // tokens)), receipt_batch,
                                       workdir)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    from protocol.messages import MAX_RECEIPT_BATCH

    if args.receipt_batch is not None and not 1 <= args.receipt_batch <= MAX_RECEIPT_BATCH:
        print(f"receipts: --receipt-batch must be from 1 to {MAX_RECEIPT_BATCH}", file=sys.stderr)
        return 2
    if min(args.rounds, args.tokens, args.batch, args.seq) < 1 or args.layers < 2:
        print("receipts: --rounds, --tokens, --batch and --seq must be at least 1, --layers at least 2",
              file=sys.stderr)
        return 2
    import torch

    from client import AutoDistributedModelForCausalLM
    from models.make_model import make_model
    from protocol.identity import Identity

    torch.set_num_threads(1)
    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        swarms = stack.enter_context(ExitStack())  # closed before the in-process figures
        try:
            model = make_model("llama", workdir / "model", layers=args.layers, hidden=args.hidden, seed=0)
        except ValueError as exc:  # e.g. a hidden size the Llama config cannot take
            print(f"receipts: {exc}", file=sys.stderr)
            return 2
        peers_off, pids_off = start_swarm("off", model, args.layers, workdir, swarms, with_keys=False)
        peers_on, pids_on = start_swarm("on", model, args.layers, workdir, swarms, with_keys=True)
        Identity.load_or_create(workdir / "client.key")
        off = AutoDistributedModelForCausalLM.from_pretrained(str(model), initial_peers=peers_off)
        swarms.callback(off.close)
        batching = {} if args.receipt_batch is None else {"receipt_batch": args.receipt_batch}
        on = AutoDistributedModelForCausalLM.from_pretrained(str(model), initial_peers=peers_on,
                                                             key=str(workdir / "client.key"), **batching)
        swarms.callback(on.close)

        ids = torch.randint(4, 500, (1, 8), generator=torch.Generator().manual_seed(0))
        kw = {"max_new_tokens": args.tokens, "min_new_tokens": args.tokens, "do_sample": False}
        same = on.generate(ids, **kw).tolist() == off.generate(ids, **kw).tolist()  # also warms both up
        batch = torch.randint(4, 500, (args.batch, args.seq), generator=torch.Generator().manual_seed(1))
        gen: dict[str, list[float]] = {"on": [], "off": []}
        fwd: dict[str, list[float]] = {"on": [], "off": []}
        meters = {"off": CpuMeter(off, pids_off), "on": CpuMeter(on, pids_on)}
        cpu: dict[str, dict[str, int]] = {"off": {}, "on": {}}
        with torch.no_grad():
            on(batch), off(batch)
            for r in range(args.rounds):
                pair = (("off", off), ("on", on)) if r % 2 == 0 else (("on", on), ("off", off))
                for name, client in pair:
                    gen[name].append(timed(lambda c=client: c.generate(ids, **kw), meters[name], cpu[name])
                                     / args.tokens)
                for name, client in pair:
                    fwd[name].append(timed(lambda c=client: c(batch)))
        receipts_held = len(on.swarm.receipts.receipts)
        receipt_batch = on.swarm.receipt_batch
        swarms.close()  # the in-process figures get the machine to themselves
        in_process = in_process_figures(model, args.layers, max(args.tokens, receipt_batch), receipt_batch, workdir)

    ms_off, ms_on = statistics.median(gen["off"]) * 1e3, statistics.median(gen["on"]) * 1e3
    fwd_off, fwd_on = statistics.median(fwd["off"]), statistics.median(fwd["on"])
    gen_ratios = sorted(on / off for on, off in zip(gen["on"], gen["off"], strict=True))
    gen_ratio = statistics.median(gen_ratios)
    quartiles = statistics.quantiles(gen_ratios, n=4) if len(gen_ratios) > 1 else [gen_ratio] * 3
    ci_low, ci_high = median_ci95(gen_ratios)
    fwd_ratio = statistics.median(on / off for on, off in zip(fwd["on"], fwd["off"], strict=True))
    tokens = args.batch * args.seq
    generated = args.rounds * args.tokens
    parts = list(cpu["on"])
    cpu_us = {side: {part: round(cpu[side].get(part, 0) / generated / 1e3, 1) for part in parts}
              for side in ("off", "on")}
    cpu_total = {side: sum(cpu[side].values()) / generated / 1e3 for side in ("off", "on")}
    hashing = hashing_figures()
    result = {
        "model": f"llama {args.layers}x{args.hidden}", "hops": 2, "receipt_batch": receipt_batch,
        "latency_ms_per_token_off": round(ms_off, 3), "latency_ms_per_token_on": round(ms_on, 3),
        "overhead_fraction": round(gen_ratio - 1, 4),
        "overhead_fraction_quartiles": [round(quartiles[0] - 1, 4), round(quartiles[2] - 1, 4)],
        "overhead_fraction_ci95": [round(ci_low - 1, 4), round(ci_high - 1, 4)],
        "overhead_fraction_of_medians": round(ms_on / ms_off - 1, 4),
        "forward_tokens_per_s_off": round(tokens / fwd_off, 1), "forward_tokens_per_s_on": round(tokens / fwd_on, 1),
        "forward_overhead_fraction": round(fwd_ratio - 1, 4),
        "forward_overhead_fraction_of_medians": round(fwd_on / fwd_off - 1, 4),
        "cpu_us_per_token": cpu_us, "cpu_overhead_fraction": round(cpu_total["on"] / cpu_total["off"] - 1, 4),
        "receipts_checked_by_client": receipts_held, "outputs_identical": same,
        "blake3_mb_per_s": round(hashing["blake3_mb_per_s"], 1),
        "sha256_mb_per_s": round(hashing["sha256_mb_per_s"], 1),
        "sign_us_per_receipt": round(hashing.get("ed25519_sign_us", float("nan")), 1),
        "verify_us_per_receipt": round(hashing.get("ed25519_verify_us", float("nan")), 1),
        **{key: in_process[key] for key in ("node_compute_us_per_token", "node_receipt_us_per_token",
                                            "node_receipt_fraction", "client_check_us_per_receipt")},
    }
    print(f"receipts on vs off — llama {args.layers} blocks x hidden {args.hidden}, 2 nodes per swarm, loopback, "
          f"receipts sent {result['receipt_batch']} at a time")
    print(f"{'':32} {'off':>12} {'on':>12} {'overhead':>9}")
    print(f"{'generation (ms/token)':32} {ms_off:>12.2f} {ms_on:>12.2f} {result['overhead_fraction']:>9.1%}")
    print(f"{f'forward {args.batch}x{args.seq} (tokens/s)':32} {tokens / fwd_off:>12.0f} {tokens / fwd_on:>12.0f} "
          f"{result['forward_overhead_fraction']:>9.1%}")
    print(f"(overhead = median over {args.rounds} rounds of on/off, each round timing both back to back; "
          f"generation quartiles {quartiles[0] - 1:.1%} … {quartiles[2] - 1:.1%}; "
          f"95 % interval of the median {ci_low - 1:.1%} … {ci_high - 1:.1%})")
    print(f"{'generation rounds on/off':32} " + " ".join(f"{a / b:.3f}" for a, b in zip(gen["on"], gen["off"],
                                                                                     strict=True)))
    print(f"\nCPU time per generated token (µs, sum over {args.rounds} rounds of {args.tokens} tokens)")
    print(f"{'':32} {'off':>12} {'on':>12} {'on - off':>9}")
    for part in parts:
        a, b = cpu_us["off"][part], cpu_us["on"][part]
        print(f"{part:32} {a:>12.1f} {b:>12.1f} {b - a:>9.1f}")
    print(f"{'all':32} {cpu_total['off']:>12.1f} {cpu_total['on']:>12.1f} "
          f"{cpu_total['on'] - cpu_total['off']:>9.1f}  ({result['cpu_overhead_fraction']:.1%})")
    print(f"hashing: blake3 {result['blake3_mb_per_s']:.0f} MB/s, sha256 {result['sha256_mb_per_s']:.0f} MB/s; "
          f"Ed25519 sign {result['sign_us_per_receipt']} µs, verify {result['verify_us_per_receipt']} µs per receipt")
    print(f"in one process, off the network: a node's receipt work {result['node_receipt_us_per_token']} µs/token "
          f"({result['node_receipt_fraction']:.1%} of its compute, {result['node_compute_us_per_token']} µs); "
          f"the client's check {result['client_check_us_per_receipt']} µs per receipt (one per hop and token)")
    print(f"client verified and counter-signed {receipts_held} receipts; outputs identical: {same}")
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
