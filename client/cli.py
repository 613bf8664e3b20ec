"""`corolla generate MODEL --initial-peers ... "prompt"`: generate text through the swarm."""

from __future__ import annotations

import argparse
import logging
import sys


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="corolla generate", description="Generate text through the swarm.")
    p.add_argument("model", help="model directory (from `corolla make-model`) or hub name")
    p.add_argument("prompt", help="text to continue")
    p.add_argument("--initial-peers", nargs="+", required=True, metavar="MADDR",
                   help="DHT bootstrap multiaddrs (from `corolla dht`)")
    p.add_argument("--max-new-tokens", type=int, default=32, help="how many tokens to generate (default 32)")
    p.add_argument("--do-sample", action="store_true", help="sample instead of greedy decoding")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (with --do-sample)")
    p.add_argument("--top-k", type=int, default=50, help="sample from the k most likely tokens (with --do-sample)")
    p.add_argument("--seed", type=int, default=None, help="random seed for sampling")
    p.add_argument("--key", help="client identity key file: verify and counter-sign receipts")
    p.add_argument("--token-ids", action="store_true", help="print the generated token ids, not text")
    p.add_argument("--ledger", help="ledger URL to escrow credits with (with --spend)")
    p.add_argument("--spend", type=int, default=0, metavar="N",
                   help="pay up to N credits for priority service (needs --ledger and --key; default 0 = free)")
    return p.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if args.max_new_tokens < 1:
        print("corolla generate: --max-new-tokens must be >= 1", file=sys.stderr)
        return 2
    if args.temperature <= 0 or args.top_k < 1:
        print("corolla generate: --temperature must be > 0 and --top-k >= 1", file=sys.stderr)
        return 2
    if args.spend < 0 or (args.spend and not (args.ledger and args.key)):
        print("corolla generate: --spend N needs N >= 0, --ledger URL and --key FILE", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    import torch
    from transformers import AutoTokenizer

    from client import AutoDistributedModelForCausalLM

    try:
        tokenizer = AutoTokenizer.from_pretrained(args.model)
        model = AutoDistributedModelForCausalLM.from_pretrained(args.model, initial_peers=args.initial_peers,
                                                                key=args.key, ledger=args.ledger,
                                                                spend=args.spend or None)
    except (OSError, ValueError, RuntimeError) as exc:
        print(f"corolla generate: {exc}", file=sys.stderr)
        return 2
    try:
        if args.seed is not None:
            torch.manual_seed(args.seed)
        ids = tokenizer(args.prompt, return_tensors="pt").input_ids
        out = model.generate(ids, max_new_tokens=args.max_new_tokens, do_sample=args.do_sample,
                             temperature=args.temperature if args.do_sample else None,
                             top_k=args.top_k if args.do_sample else None)
        if args.token_ids:
            print(" ".join(str(t) for t in out[0].tolist()))
        else:
            print(tokenizer.decode(out[0], skip_special_tokens=True))
        spending = model.swarm.spending
        if spending is not None and hasattr(spending, "spent"):
            print(f"spent {spending.spent} of {args.spend} credits for priority", file=sys.stderr)
    finally:
        model.close()
    return 0
