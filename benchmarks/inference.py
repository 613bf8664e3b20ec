"""Generation and forward throughput through a 2-node swarm on loopback vs. local transformers.

Both sides run in the same invocation on the same model with one torch thread per process
(nodes run with --torch-threads 1, and this process sets 1), so the ratio is fair on a
shared machine. Generation is timed in alternating rounds (swarm then local, local then
swarm, ...), and per_hop_overhead_ms is the median over rounds of
(swarm ms/token - local ms/token) / hops, so a load spike hits both sides of a round.

    .venv/bin/python benchmarks/inference.py [--layers 8 --hidden 512 --tokens 64] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, default=8, help="blocks of the benchmark Llama (default 8)")
    p.add_argument("--hidden", type=int, default=512, help="hidden size (default 512)")
    p.add_argument("--tokens", type=int, default=64, help="new tokens per generation (default 64)")
    p.add_argument("--repeats", type=int, default=9,
                   help="alternating generation rounds (medians are reported; forward: best of these)")
    p.add_argument("--batch", type=int, default=4, help="forward batch size (default 4)")
    p.add_argument("--seq", type=int, default=128, help="forward sequence length (default 128)")
    p.add_argument("--nodes", type=int, default=2, help="nodes (hops) in the swarm (default 2)")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    return p.parse_args(argv)


def best_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def generation_rounds(swarm_fn, local_fn, rounds: int) -> tuple[list[float], list[float]]:
    """Seconds per generation of each side, round by round, the order alternating."""
    swarm_fn(), local_fn()  # warm-up
    swarm_s, local_s = [], []
    for r in range(rounds):
        pair = ((swarm_fn, swarm_s), (local_fn, local_s))
        for fn, times in (pair if r % 2 == 0 else pair[::-1]):
            started = time.perf_counter()
            fn()
            times.append(time.perf_counter() - started)
    return swarm_s, local_s


def measure_transport_ms(swarm, hidden: int, steps: int) -> float:
    """Median per-hop time of a one-token step spent outside the nodes' compute (wire + software)."""
    import statistics

    import torch

    x = torch.randn(1, 1, hidden)
    overheads, wire = [], []
    with swarm.inference_session(max_length=steps + 1) as session:
        session.step(x)
        for _ in range(steps):
            started = time.perf_counter()
            session.step(x)
            wall_ms = (time.perf_counter() - started) * 1e3
            hops = len(session.last_compute_ms)
            overheads.append((wall_ms - sum(session.last_compute_ms)) / hops)
            wire.extend(r - c for r, c in zip(session.last_rtt_ms, session.last_compute_ms, strict=True))
    return statistics.median(overheads), statistics.median(wire)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    import torch
    from transformers import AutoModelForCausalLM

    from cli.demo import split_blocks, start_service, wait_ready
    from client import AutoDistributedModelForCausalLM
    from models.make_model import make_model

    torch.set_num_threads(1)
    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        model = make_model("llama", workdir / "model", layers=args.layers, hidden=args.hidden, seed=0)
        dht = start_service("dht", ["dht"], workdir)
        stack.callback(dht.stop)
        peers = wait_ready(dht).ready["maddrs"]
        nodes = []
        for i, (start, end) in enumerate(split_blocks(args.layers, args.nodes)):
            node = start_service(f"node{i}", ["node", str(model), "--blocks", f"{start}:{end}", "--initial-peers",
                                              *peers, "--torch-threads", "1"], workdir)
            stack.callback(node.stop)
            nodes.append(node)
        for node in nodes:
            wait_ready(node)
        swarm = AutoDistributedModelForCausalLM.from_pretrained(str(model), initial_peers=peers)
        stack.callback(swarm.close)
        local = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32).eval()

        ids = torch.randint(4, 500, (1, 8), generator=torch.Generator().manual_seed(0))
        kw = {"max_new_tokens": args.tokens, "min_new_tokens": args.tokens, "do_sample": False}
        same = swarm.generate(ids, **kw).tolist() == local.generate(ids, **kw).tolist()
        swarm_runs, local_runs = generation_rounds(lambda: swarm.generate(ids, **kw),
                                                   lambda: local.generate(ids, **kw), args.repeats)

        transport_ms, stream_ms = measure_transport_ms(swarm, args.hidden, args.tokens)
        batch = torch.randint(4, 500, (args.batch, args.seq), generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            fwd_swarm_s = best_time(lambda: swarm(batch), args.repeats)
            fwd_local_s = best_time(lambda: local(batch), args.repeats)

    import statistics

    hops = len(nodes)
    swarm_s, local_s = statistics.median(swarm_runs), statistics.median(local_runs)
    swarm_tps, local_tps = args.tokens / swarm_s, args.tokens / local_s
    per_round = sorted((s - lo) / args.tokens / hops * 1e3 for s, lo in zip(swarm_runs, local_runs, strict=True))
    overhead_ms = statistics.median(per_round)
    fwd_tokens = args.batch * args.seq
    result = {
        "model": f"llama {args.layers}x{args.hidden}", "hops": hops, "tokens": args.tokens,
        "swarm_tokens_per_s": round(swarm_tps, 2), "local_tokens_per_s": round(local_tps, 2),
        "per_hop_overhead_ms": round(overhead_ms, 3),
        "per_hop_overhead_ms_range": [round(per_round[0], 3), round(per_round[-1], 3)],
        "per_hop_transport_ms": round(transport_ms, 3),
        "per_hop_stream_roundtrip_ms": round(stream_ms, 3),
        "forward_tokens_per_s": round(fwd_tokens / fwd_swarm_s, 1),
        "local_forward_tokens_per_s": round(fwd_tokens / fwd_local_s, 1),
        "swarm_matches_local": same,
    }
    rows = [
        ("single-sequence generation", f"{swarm_tps:.1f} tok/s", f"{local_tps:.1f} tok/s", f"{swarm_tps / local_tps:.2f}"),
        (f"forward {args.batch}x{args.seq}", f"{fwd_tokens / fwd_swarm_s:.0f} tok/s",
         f"{fwd_tokens / fwd_local_s:.0f} tok/s", f"{fwd_local_s / fwd_swarm_s:.2f}"),
    ]
    print(f"model: llama {args.layers} blocks x hidden {args.hidden}, {hops} nodes on loopback, 1 thread each")
    print(f"{'':28} {'swarm':>14} {'local':>14} {'ratio':>7}")
    for name, a, b, r in rows:
        print(f"{name:28} {a:>14} {b:>14} {r:>7}")
    print(f"per-hop overhead vs local: {overhead_ms:.2f} ms/token (median of {args.repeats} rounds, "
          f"{per_round[0]:.2f}..{per_round[-1]:.2f}); per-hop time outside node compute: "
          f"{transport_ms:.2f} ms/token (stream round trip minus compute: {stream_ms:.2f} ms); swarm tokens identical to local: {same}")
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
