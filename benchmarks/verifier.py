"""How often the verifier catches each cheater, how often it wrongs an honest node, what it costs.

For each adversary of tests/adversaries/work.py, N receipts are made on real BlockSpans and
each is challenged once at a random block (chains of two nodes, the cheater first or
second); the detection rate is the share judged FAIL. A node that cheats on every receipt
and is sampled at rate s is caught after 1 / (s × rate) receipts on average. The honest
node's FAIL share is the false-positive rate. Cost: verifier CPU seconds per challenged
receipt over the node's CPU seconds per receipt, times the sampling rate (5 %). Decode
steps are costed per way of recomputing their prefix (`inference_figures`) and per way
of choosing the sampled steps' blocks (`sampled_session_figures`), and nodes
announcing bfloat16 are scored apart (`bfloat16_claims`: int8 there needs verifier/precision.py).

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
from verifier.recompute import BlockLoader, extend_session_rows  # noqa: E402
from verifier.sampling import challenged_block, session_block  # noqa: E402
from verifier.tolerance import Thresholds  # noqa: E402

RATES = (0.01, 0.05, 0.20)
SESSION_SCHEMES = {  # sampled_session_figures: how the sampled steps' blocks are chosen and computed
    "per_session": "one block per session, rows at once where narrow (the service)",
    "per_session_extended": "one block per session, prefix extended check by check",
    "per_receipt": "one block per receipt, prefix held per block (before)",
}
SESSION_KEYS = {
    "per_session": "cost_fraction_sampled_sessions",
    "per_session_extended": "cost_fraction_sampled_sessions_prefix_extended",
    "per_receipt": "cost_fraction_sampled_sessions_per_receipt_block",
}


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
    *,
    sessions: int = 4,
    prompt: int = 32,
    steps: int = 16,
    rate: float = 1.0,
    rng: random.Random | None = None,
) -> tuple[float, int]:
    """Verifier CPU over node CPU for decode steps: (ratio, checks).

    Each session is a prompt of `prompt` positions then `steps` one-position steps; each
    step is challenged with probability `rate` at a random block of the span. The node's
    time is its `call` (one position against its cache, every block of its span); the
    verifier's is the node's `open` plus `judge_openings` (commitment checks and one block
    recomputed over the opened prefix), as for forward receipts in `challenge`; the
    client's counter-signature happens for every receipt and is not counted. rate=1
    gives the cost of one challenged step (x 0.05: the cost at 5 % when every check finds
    the keys/values an earlier check of its session left); a rate below 1 samples steps
    as the service does, so held keys/values are reused only as often as they would be.
    """
    from protocol.receipts import Kind

    rng = rng or random.Random(0)
    node_s, verify_s, checks = 0.0, 0.0, 0
    for _ in range(sessions):
        session = os.urandom(16)
        t0 = time.process_time()
        d = node.call(
            client.identity, torch.randn(1, prompt, hidden) * 0.02, kind=Kind.INFERENCE, session_id=session
        )
        node_s += time.process_time() - t0
        for step in range(1, steps + 1):
            x = torch.randn(1, 1, hidden) * 0.02
            t0 = time.process_time()
            d = node.call(client.identity, x, kind=Kind.INFERENCE, session_id=session, step=step)
            node_s += time.process_time() - t0
            if rng.random() >= rate:
                continue
            signed = client.receive(d)
            t1 = time.process_time()
            openings = node.open(signed.id, rng.randrange(node.start, node.end))
            judge_openings(signed.receipt, openings, loader, th)
            verify_s, checks = verify_s + (time.process_time() - t1), checks + 1
    return (verify_s / node_s if node_s else 0.0), checks


def bfloat16_claims(
    model: Path,
    args: argparse.Namespace,
    client: Client,
    loader: BlockLoader,
    th: Thresholds,
    rng: random.Random,
) -> tuple[dict[str, float], dict[str, float]]:
    """FAIL share of nodes announcing bfloat16: quantized cheaters, and the honest bf16 node
    (its false-positive rate). Both hops compute in bfloat16 so the chain hashes match.
    Also the cost fraction (5 % sampling) of the honest bf16 node's checks with and without
    the lower-precision test (verifier/precision.py: one more block recompute)."""
    from dataclasses import replace

    from verifier.precision import simulated_block

    if args.bf16_challenges <= 0:
        return {}, {}
    half = args.layers // 2
    nxt = HonestNode(model, half, args.layers, dtype=torch.bfloat16)
    nodes = {
        "int8": QuantizedNode(model, 0, half, quantize="int8", dtype=torch.bfloat16),
        "nf4": QuantizedNode(model, 0, half, quantize="nf4", dtype=torch.bfloat16),
        "honest": HonestNode(model, 0, half, dtype=torch.bfloat16),
    }
    for block in range(half):  # loads are not what a check costs
        loader.block(block, torch.bfloat16)
        simulated_block(loader, block, torch.bfloat16)
    plain = Thresholds(
        entries={k: replace(t, precision_bound=0.0) for k, t in th.entries.items()}, metric=th.metric
    )
    rates, costs = {}, {}
    for name, node in nodes.items():
        runs = [
            challenge(node, nxt, client, loader, th, [], rng, args.hidden)
            for _ in range(args.bf16_challenges)
        ]
        rates[name] = sum(r[0] for r in runs) / args.bf16_challenges
    for label, thresholds in (("with_precision_test", th), ("without_precision_test", plain)):
        runs = [
            challenge(nodes["honest"], nxt, client, loader, thresholds, [], rng, args.hidden)
            for _ in range(args.bf16_challenges)
        ]
        costs[label] = 0.05 * sum(r[2] for r in runs) / sum(r[1] for r in runs)
    return rates, costs


def _load(loader: BlockLoader, node: HonestNode) -> None:
    """Load the node's blocks into the verifier's loader before anything is timed."""
    for block in range(node.start, node.end):
        loader.block(block)


def inference_figures(
    model: Path, client: Client, th: Thresholds, args: argparse.Namespace, rng: random.Random
) -> dict[str, tuple[float, int, str]]:
    """Decode-step cost, name -> (verifier / node CPU, checks, label), per way of recomputing.

    "held" (the service's way, reported as cost_fraction_inference): every step
    challenged, prefix keys/values kept between checks of a session; "per_check": the
    same with nothing kept (each check pays for its prefix's keys/values); "full_prefix":
    the whole block over the whole prefix (the reference before keys/values-only); these
    three x 0.05 are the cost at 5 % sampling. "sampled" ("sampled_full_prefix"): 5 % of
    the steps of 64-step sessions challenged at random (the same ones both ways), verifier
    CPU over all the node's CPU: the cost fraction itself.
    """
    if args.inference_sessions <= 0:
        return {}
    decoder = HonestNode(model, 0, args.layers // 2)
    ways = {
        "held": (
            BlockLoader(model, capacity=args.layers),
            "keys/values of the prefix only, held across checks",
        ),
        "per_check": (
            BlockLoader(model, capacity=args.layers, prefix_capacity=0),
            "keys/values of the prefix only, nothing held",
        ),
        "full_prefix": (
            BlockLoader(model, capacity=args.layers, cheap_prefix=False),
            "whole block over the whole prefix (before)",
        ),
    }
    out = {}
    for name, (loader, label) in ways.items():
        _load(loader, decoder)
        ratio, checks = inference_cost(
            decoder,
            client,
            loader,
            th,
            args.hidden,
            sessions=args.inference_sessions,
            prompt=args.prompt,
            rng=rng,
        )
        out[name] = (ratio, checks, "every step challenged, " + label)
    if args.sampled_sessions > 0:
        sampled = {
            "sampled": (BlockLoader(model, capacity=args.layers), "held"),
            "sampled_full_prefix": (
                BlockLoader(model, capacity=args.layers, cheap_prefix=False),
                "whole block over the whole prefix (before)",
            ),
        }
        for name, (loader, label) in sampled.items():
            _load(loader, decoder)
            ratio, checks = inference_cost(
                decoder,
                client,
                loader,
                th,
                args.hidden,
                sessions=args.sampled_sessions,
                prompt=args.prompt,
                steps=64,
                rate=0.05,
                rng=random.Random(args.seed + 1),  # both ways check the same steps and blocks
            )
            out[name] = (
                ratio,
                checks,
                f"5 % of the steps of {args.sampled_sessions} 64-step sessions, {label}",
            )
    return out


def sampled_session_figures(
    model: Path, client: Client, th: Thresholds, args: argparse.Namespace
) -> dict[str, tuple[float, int]]:
    """Decode-step cost at 5 % sampling as the service checks it, per way of choosing blocks:
    name -> (verifier CPU / all the node's CPU, checks).

    `args.sampled_sessions` sessions of a `args.prompt`-position prompt and 64 one-position
    steps; each step sampled with probability 0.05. After the session, its sampled steps
    are checked in step order, once per scheme on the same openings, each scheme with its
    own loader (prefix keys/values held per (node, session, block), as in the service):
    "per_session" opens every sampled step at the session's block (`session_block`, the
    service's scheme: all opened first, and on a narrow model the block's rows for all of
    them computed in one layer call, `extend_session_rows`); "per_session_extended" the
    same block, each check extending the prefix keys/values of the one before;
    "per_receipt" at each receipt's own block (`challenged_block`, the scheme before).
    Which scheme goes first rotates by session. Verifier time is the node's `open` plus `judge_openings`;
    node time is every `call` of the session.
    """
    from protocol.receipts import Kind

    if args.sampled_sessions <= 0:
        return {}
    rng = random.Random(args.seed + 2)
    secret = rng.randbytes(32)
    node = HonestNode(model, 0, args.layers // 2)
    loaders = {name: BlockLoader(model, capacity=args.layers) for name in SESSION_SCHEMES}
    pick = {
        "per_session": session_block,
        "per_session_extended": session_block,
        "per_receipt": challenged_block,
    }
    for loader in loaders.values():
        _load(loader, node)
    node_s, verify_s, checks = 0.0, dict.fromkeys(loaders, 0.0), 0
    for n in range(args.sampled_sessions):
        session, sampled = rng.randbytes(16), []
        for step in range(65):
            x = torch.randn(1, args.prompt if step == 0 else 1, args.hidden) * 0.02
            t0 = time.process_time()
            d = node.call(client.identity, x, kind=Kind.INFERENCE, session_id=session, step=step)
            node_s += time.process_time() - t0
            if step > 0 and rng.random() < 0.05:
                sampled.append(client.receive(d))
        checks += len(sampled)
        for name in list(loaders)[n % 3 :] + list(loaders)[: n % 3]:  # each goes first in turn
            t1 = time.process_time()
            opened = [node.open(signed.id, pick[name](secret, signed.receipt)) for signed in sampled]
            if name == "per_session" and len(opened) > 1:  # as Verifier._open_session does
                first = min(int(op.inputs.shape[1] - op.output.shape[1]) for op in opened)
                key = node.identity.public_key + session
                extend_session_rows(
                    loaders[name], opened[0].block, opened[-1].inputs, first, len(opened), session=key
                )
            for signed, openings in zip(sampled, opened, strict=True):
                judge_openings(signed.receipt, openings, loaders[name], th)
            verify_s[name] += time.process_time() - t1
    return {name: (spent / node_s, checks) for name, spent in verify_s.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--challenges", type=int, default=40, help="challenged receipts per adversary")
    p.add_argument("--honest", type=int, default=300, help="challenged honest receipts (false positives)")
    p.add_argument("--layers", type=int, default=4, help="blocks of the benchmark model")
    p.add_argument("--hidden", type=int, default=128, help="hidden size of the benchmark model")
    p.add_argument("--seed", type=int, default=0, help="seed of the draws")
    p.add_argument(
        "--inference-sessions",
        type=int,
        default=4,
        help="decode sessions (16 steps each, all challenged) per variant",
    )
    p.add_argument(
        "--sampled-sessions",
        type=int,
        default=16,
        help="decode sessions of 64 steps challenged at 5 %% (0: skip)",
    )
    p.add_argument("--prompt", type=int, default=32, help="prompt positions of each decode session")
    p.add_argument(
        "--bf16-challenges",
        type=int,
        default=40,
        help="challenged receipts of int8, nf4 and honest nodes announcing bfloat16 (0: skip)",
    )
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
        bf16, bf16_cost = bfloat16_claims(model, args, client, loader, th, rng)
        seen, fails, node_s, verify_s = [], 0, 0.0, 0.0
        for _ in range(args.honest):
            failed, ns, vs = challenge(honest, nxt, client, loader, th, seen, rng, args.hidden)
            fails, node_s, verify_s = fails + failed, node_s + ns, verify_s + vs
        inference = inference_figures(model, client, th, args, rng)
        sessions = sampled_session_figures(model, client, th, args)
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
    if bf16:
        print(
            f"announcing bfloat16 ({args.bf16_challenges} receipts each; int8 caught by the lower-precision test): "
            + ", ".join(f"{name} {rate:.3f}" for name, rate in bf16.items())
            + "; cost of honest bf16 checks at 5 %: "
            + ", ".join(f"{k.replace('_', ' ')} {v:.4f}" for k, v in bf16_cost.items())
        )
    print(
        f"cost: verifier {verify_s / args.honest * 1e3:.2f} ms CPU per check, node {node_s / args.honest * 1e3:.2f} ms "
        f"CPU per receipt -> {cost_fraction:.4f} of audited compute at 5 % sampling (forward receipts)"
    )
    last = args.prompt + 16
    print(
        f"inference (decode steps after a {args.prompt}-position prompt, prefix {args.prompt + 1}-{last}): "
        "verifier / node CPU"
    )
    for name, (ratio, checks, label) in inference.items():
        scaled = ratio if name.startswith("sampled") else 0.05 * ratio
        print(f"  {label:66} {ratio:6.3f} ({checks} checks) -> {scaled:.4f} at 5 %")
    if sessions:
        print(
            f"5 % of the steps of {args.sampled_sessions} 64-step sessions, checked after each session in step "
            "order (the same steps every way): verifier / node CPU"
        )
        for name, label in SESSION_SCHEMES.items():
            ratio, checks = sessions[name]
            print(f"  {label:66} {ratio:6.4f} ({checks} checks)")
    if args.json:
        print(
            json.dumps(
                {
                    "detection_rate": detection,
                    "detection_rate_claiming_bfloat16": {k: v for k, v in bf16.items() if k != "honest"},
                    "false_positive_rate_bfloat16": bf16.get("honest"),
                    "cost_fraction_bfloat16": bf16_cost,
                    "false_positive_rate": fp_rate,
                    "cost_fraction": cost_fraction,
                    **{
                        "cost_fraction_inference" + ("" if name == "held" else "_" + name): (
                            ratio if name.startswith("sampled") else 0.05 * ratio
                        )
                        for name, (ratio, _, _) in inference.items()
                    },
                    **{SESSION_KEYS[name]: ratio for name, (ratio, _) in sessions.items()},
                    "expected_receipts_to_detection": {
                        n: {str(r): (1 / (r * d) if d else None) for r in RATES} for n, d in detection.items()
                    },
                }
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
