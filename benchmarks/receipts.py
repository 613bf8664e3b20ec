"""What receipts cost: generation latency and forward throughput with receipts on vs off.

Two swarms of the same model run side by side in one invocation, each with its own DHT and
2 nodes (1 torch thread per process): "off" nodes have no identity (no hashing, Merkle
root, signing, outbox); "on" nodes sign every step and the client verifies, counter-signs
and acknowledges each receipt. Measurements alternate between the swarms so both see the
same machine load: each round times both back to back (off first in even rounds, on first
in odd ones), and the overheads are the medians of the per-round on/off ratios, so a load
change from other processes between rounds cancels out. Hashing and signing costs per MB
and per receipt come from benchmarks/receipts_hashing.py in the same run.

    .venv/bin/python benchmarks/receipts.py [--layers 8 --hidden 512 --tokens 64] [--json]

With --json the last line is one JSON object with overhead_fraction (inference, on vs off)
and forward_overhead_fraction (medians of per-round ratios), and the same from the medians
of each swarm's timings (`*_of_medians`).
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
    p.add_argument("--tokens", type=int, default=64, help="new tokens per generation (default 64)")
    p.add_argument("--rounds", type=int, default=5, help="alternating timed rounds per swarm (median kept)")
    p.add_argument("--batch", type=int, default=4, help="forward batch size (default 4)")
    p.add_argument("--seq", type=int, default=128, help="forward sequence length (default 128)")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    return p.parse_args(argv)


def start_swarm(name: str, model: Path, layers: int, workdir: Path, stack: ExitStack,
                with_keys: bool) -> list[str]:
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
    return peers


def timed(fn: Any) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def hashing_figures() -> dict[str, float]:
    from benchmarks import receipts_hashing

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        receipts_hashing.main(["--json", "--repeat", "5"])
    return json.loads(buffer.getvalue().strip().splitlines()[-1])


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    import torch

    from client import AutoDistributedModelForCausalLM
    from models.make_model import make_model
    from protocol.identity import Identity

    torch.set_num_threads(1)
    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        model = make_model("llama", workdir / "model", layers=args.layers, hidden=args.hidden, seed=0)
        peers_off = start_swarm("off", model, args.layers, workdir, stack, with_keys=False)
        peers_on = start_swarm("on", model, args.layers, workdir, stack, with_keys=True)
        Identity.load_or_create(workdir / "client.key")
        off = AutoDistributedModelForCausalLM.from_pretrained(str(model), initial_peers=peers_off)
        stack.callback(off.close)
        on = AutoDistributedModelForCausalLM.from_pretrained(str(model), initial_peers=peers_on,
                                                             key=str(workdir / "client.key"))
        stack.callback(on.close)

        ids = torch.randint(3, 500, (1, 8), generator=torch.Generator().manual_seed(0))
        kw = {"max_new_tokens": args.tokens, "min_new_tokens": args.tokens, "do_sample": False}
        same = on.generate(ids, **kw).tolist() == off.generate(ids, **kw).tolist()  # also warms both up
        batch = torch.randint(3, 500, (args.batch, args.seq), generator=torch.Generator().manual_seed(1))
        gen = {"on": [], "off": []}
        fwd = {"on": [], "off": []}
        with torch.no_grad():
            on(batch), off(batch)
            for r in range(args.rounds):
                pair = (("off", off), ("on", on)) if r % 2 == 0 else (("on", on), ("off", off))
                for name, client in pair:
                    gen[name].append(timed(lambda c=client: c.generate(ids, **kw)) / args.tokens)
                for name, client in pair:
                    fwd[name].append(timed(lambda c=client: c(batch)))
        receipts_held = len(on.swarm.receipts.receipts)

    ms_off, ms_on = statistics.median(gen["off"]) * 1e3, statistics.median(gen["on"]) * 1e3
    fwd_off, fwd_on = statistics.median(fwd["off"]), statistics.median(fwd["on"])
    gen_ratio = statistics.median(on / off for on, off in zip(gen["on"], gen["off"], strict=True))
    fwd_ratio = statistics.median(on / off for on, off in zip(fwd["on"], fwd["off"], strict=True))
    tokens = args.batch * args.seq
    hashing = hashing_figures()
    result = {
        "model": f"llama {args.layers}x{args.hidden}", "hops": 2,
        "latency_ms_per_token_off": round(ms_off, 3), "latency_ms_per_token_on": round(ms_on, 3),
        "overhead_fraction": round(gen_ratio - 1, 4),
        "overhead_fraction_of_medians": round(ms_on / ms_off - 1, 4),
        "forward_tokens_per_s_off": round(tokens / fwd_off, 1), "forward_tokens_per_s_on": round(tokens / fwd_on, 1),
        "forward_overhead_fraction": round(fwd_ratio - 1, 4),
        "forward_overhead_fraction_of_medians": round(fwd_on / fwd_off - 1, 4),
        "receipts_checked_by_client": receipts_held, "outputs_identical": same,
        "blake3_mb_per_s": round(hashing["blake3_mb_per_s"], 1),
        "sha256_mb_per_s": round(hashing["sha256_mb_per_s"], 1),
        "sign_us_per_receipt": round(hashing.get("ed25519_sign_us", float("nan")), 1),
        "verify_us_per_receipt": round(hashing.get("ed25519_verify_us", float("nan")), 1),
    }
    print(f"receipts on vs off — llama {args.layers} blocks x hidden {args.hidden}, 2 nodes per swarm, loopback")
    print(f"{'':32} {'off':>12} {'on':>12} {'overhead':>9}")
    print(f"{'generation (ms/token)':32} {ms_off:>12.2f} {ms_on:>12.2f} {result['overhead_fraction']:>9.1%}")
    print(f"{f'forward {args.batch}x{args.seq} (tokens/s)':32} {tokens / fwd_off:>12.0f} {tokens / fwd_on:>12.0f} "
          f"{result['forward_overhead_fraction']:>9.1%}")
    print(f"(overhead = median over {args.rounds} rounds of on/off, each round timing both back to back)")
    print(f"hashing: blake3 {result['blake3_mb_per_s']:.0f} MB/s, sha256 {result['sha256_mb_per_s']:.0f} MB/s; "
          f"Ed25519 sign {result['sign_us_per_receipt']} µs, verify {result['verify_us_per_receipt']} µs per receipt")
    print(f"client verified and counter-signed {receipts_held} receipts; outputs identical: {same}")
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
