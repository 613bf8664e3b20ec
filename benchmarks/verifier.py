"""How often the verifier catches each cheater, how often it wrongs an honest node, what it costs.

For each adversary of tests/adversaries/work.py, N receipts are made on real BlockSpans and
each is challenged once at a random block (chains of two nodes, the cheater first or
second); the detection rate is the share judged FAIL. A node that cheats on every receipt
and is sampled at rate s is caught after 1 / (s × rate) receipts on average. The honest
node's FAIL share is the false-positive rate. Cost: verifier CPU seconds per challenged
receipt over the node's CPU seconds per receipt, times the sampling rate (5 %).

    .venv/bin/python benchmarks/verifier.py [--challenges 40] [--honest 300] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from tests.adversaries.work import (  # noqa: E402
    Client,
    HonestNode,
    MismatchNode,
    NoiseNode,
    OtherModelNode,
    QuantizedNode,
    ReplayNode,
    SkipBlockNode,
)
from verifier.judge import judge_openings, judge_receipt_only  # noqa: E402
from verifier.recompute import BlockLoader  # noqa: E402
from verifier.tolerance import Thresholds  # noqa: E402

RATES = (0.01, 0.05, 0.20)


def make_nodes(model: Path, other: Path, layers: int) -> tuple[dict[str, HonestNode], HonestNode, HonestNode]:
    half = layers // 2
    cheaters = {
        "noise": NoiseNode(model, 0, half),
        "other_model": OtherModelNode(model, 0, half, other_model_dir=other),
        "skip_block": SkipBlockNode(model, 0, half),
        "int8": QuantizedNode(model, 0, half, quantize="int8"),
        "nf4": QuantizedNode(model, 0, half, quantize="nf4"),
        "replay": ReplayNode(model, 0, half),
        "receipt_mismatch": MismatchNode(model, 0, half),
    }
    return cheaters, HonestNode(model, 0, half), HonestNode(model, half, layers)


def challenge(
    node: HonestNode,
    nxt: HonestNode,
    client: Client,
    loader: BlockLoader,
    th: Thresholds,
    seen: list,
    rng: random.Random,
    hidden: int,
    shape: tuple[int, int] | None = None,
) -> tuple[bool, float, float]:
    """One receipt of `node` (followed by an honest hop), challenged once. (failed, node s, verifier s)."""
    batch, length = shape or (rng.choice((1, 2)), rng.randint(4, 32))
    x = torch.randn(batch, length, hidden) * 0.02
    t0 = time.process_time()
    d = node.call(client.identity, x, session_id=os.urandom(16))
    node_s = time.process_time() - t0
    signed = client.receive(d)
    d2 = nxt.call(client.identity, d.output, session_id=signed.receipt.session_id)
    neighbour = client.receive(d2)
    t1 = time.process_time()
    found = judge_receipt_only(
        signed, [s for s in seen if s.receipt.output_hash == signed.receipt.output_hash], [neighbour]
    )
    if found is None:
        block = rng.randrange(signed.receipt.block_start, signed.receipt.block_end)
        found = judge_openings(signed.receipt, node.open(signed.id, block), loader, th)
    verify_s = time.process_time() - t1
    seen.append(signed)
    time.sleep(0.002)
    return found.result.name == "FAIL", node_s, verify_s


def inference_cost(
    node: HonestNode,
    client: Client,
    loader: BlockLoader,
    th: Thresholds,
    hidden: int,
    prompt: int = 32,
    steps: int = 16,
) -> float:
    """Verifier CPU per challenged decode step over node CPU per step (before sampling).

    The node runs one new position against its cache; the verifier recomputes the block
    over the whole prefix, so this ratio grows with the prefix length.
    """
    from protocol.receipts import Kind

    session, node_s, verify_s = os.urandom(16), 0.0, 0.0
    node.call(client.identity, torch.randn(1, prompt, hidden) * 0.02, kind=Kind.INFERENCE, session_id=session)
    for step in range(1, steps + 1):
        t0 = time.process_time()
        d = node.call(
            client.identity,
            torch.randn(1, 1, hidden) * 0.02,
            kind=Kind.INFERENCE,
            session_id=session,
            step=step,
        )
        t1 = time.process_time()
        signed = client.receive(d)
        block = node.start + step % (node.end - node.start)
        judge_openings(signed.receipt, node.open(signed.id, block), loader, th)
        node_s, verify_s = node_s + (t1 - t0), verify_s + (time.process_time() - t1)
    return verify_s / node_s


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--challenges", type=int, default=40, help="challenged receipts per adversary")
    p.add_argument("--honest", type=int, default=300, help="challenged honest receipts (false positives)")
    p.add_argument("--layers", type=int, default=4, help="blocks of the benchmark model")
    p.add_argument("--hidden", type=int, default=128, help="hidden size of the benchmark model")
    p.add_argument("--seed", type=int, default=0, help="seed of the draws")
    p.add_argument("--json", action="store_true", help="print one JSON object last")
    args = p.parse_args(argv)
    import logging

    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    from models.make_model import make_model

    rng = random.Random(args.seed)
    torch.manual_seed(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        model = make_model("llama", Path(tmp) / "m", layers=args.layers, hidden=args.hidden, seed=0)
        other = make_model("llama", Path(tmp) / "o", layers=args.layers, hidden=args.hidden, seed=1)
        cheaters, honest, nxt = make_nodes(model, other, args.layers)
        loader, th, client = BlockLoader(model, capacity=args.layers), Thresholds.load(), Client()
        detection: dict[str, float] = {}
        for name, node in cheaters.items():
            seen: list = []
            shape = (2, 16) if name == "replay" else None  # a replayer needs a request of a shape it saw
            if name == "replay":  # its first answer is honest work, the rest are replays
                challenge(node, nxt, client, loader, th, seen, rng, args.hidden, shape)
            caught = sum(
                challenge(node, nxt, client, loader, th, seen, rng, args.hidden, shape)[0]
                for _ in range(args.challenges)
            )
            detection[name] = caught / args.challenges
        seen, fails, node_s, verify_s = [], 0, 0.0, 0.0
        for _ in range(args.honest):
            failed, ns, vs = challenge(honest, nxt, client, loader, th, seen, rng, args.hidden)
            fails, node_s, verify_s = fails + failed, node_s + ns, verify_s + vs
        inference_ratio = inference_cost(
            HonestNode(model, 0, args.layers // 2), client, loader, th, args.hidden
        )
    fp_rate = fails / args.honest
    cost_fraction = 0.05 * verify_s / node_s
    print(
        f"model: llama {args.layers} blocks x hidden {args.hidden}; cheater serves blocks 0:{args.layers // 2}, "
        f"one block challenged per receipt; thresholds {th.metric}"
    )
    print(
        f"{'adversary':18} {'detect/challenge':>16} "
        + " ".join(f"{'E[receipts] @' + f'{r:.0%}':>16}" for r in RATES)
    )
    for name, rate in detection.items():
        cells = " ".join(f"{(1 / (r * rate) if rate else float('inf')):16.1f}" for r in RATES)
        print(f"{name:18} {rate:16.3f} {cells}")
    print(f"honest: {fails} false failures in {args.honest} checks (rate {fp_rate:.4f})")
    print(
        f"cost: verifier {verify_s / args.honest * 1e3:.2f} ms CPU per check, node {node_s / args.honest * 1e3:.2f} ms "
        f"CPU per receipt -> {cost_fraction:.4f} of audited compute at 5 % sampling (forward receipts)"
    )
    print(
        f"inference: a challenged decode step (prefix 33-48) costs the verifier {inference_ratio:.2f}x the node's "
        f"step (the node decodes against its cache, the verifier recomputes the prefix) -> {0.05 * inference_ratio:.4f} at 5 %"
    )
    if args.json:
        print(
            json.dumps(
                {
                    "detection_rate": detection,
                    "false_positive_rate": fp_rate,
                    "cost_fraction": cost_fraction,
                    "cost_fraction_inference": 0.05 * inference_ratio,
                    "expected_receipts_to_detection": {
                        n: {str(r): (1 / (r * d) if d else None) for r in RATES} for n, d in detection.items()
                    },
                }
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
