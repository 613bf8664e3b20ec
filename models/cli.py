"""`corolla make-model`: write a small model with seeded random weights and an offline tokenizer."""

from __future__ import annotations

import argparse
import sys

from models import SUPPORTED_ARCHS

DTYPE_NAMES = ("float32", "bfloat16", "float16")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="corolla make-model",
        description="Write a small causal LM (real transformers config, seeded random weights, "
        "safetensors), an offline tokenizer and its Corolla manifest into a directory.",
    )
    p.add_argument("--arch", required=True, choices=SUPPORTED_ARCHS, help="model family")
    p.add_argument("--out", required=True, help="directory to write the model into (created if missing)")
    p.add_argument("--layers", type=int, default=4, help="number of transformer blocks (default 4)")
    p.add_argument("--hidden", type=int, default=128, help="hidden size (default 128)")
    p.add_argument("--heads", type=int, default=None, help="attention heads (default hidden/32)")
    p.add_argument("--vocab", type=int, default=512, help="vocabulary size, at least 300 (default 512)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights (default 0)")
    p.add_argument("--dtype", default="float32", choices=DTYPE_NAMES, help="dtype of the saved weights")
    p.add_argument(
        "--max-shard-size",
        default=None,
        help="write a sharded checkpoint with shards of at most this size, e.g. 200KB",
    )
    return p


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.layers < 1 or args.hidden < 8 or args.vocab < 300:
        print("corolla make-model: need --layers >= 1, --hidden >= 8 and --vocab >= 300", file=sys.stderr)
        return 2
    if args.heads is not None and (
        args.heads < 1 or args.hidden % args.heads or (args.hidden // args.heads) % 2
    ):
        print(
            f"corolla make-model: --hidden {args.hidden} must split into --heads {args.heads} heads of even size",
            file=sys.stderr,
        )
        return 2
    from models.make_model import make_model
    from models.manifest_builder import load_manifest

    try:
        out = make_model(
            args.arch,
            args.out,
            layers=args.layers,
            hidden=args.hidden,
            heads=args.heads,
            vocab=args.vocab,
            seed=args.seed,
            dtype=args.dtype,
            max_shard_size=args.max_shard_size,
        )
    except (ValueError, OSError) as exc:
        print(f"corolla make-model: {exc}", file=sys.stderr)
        return 2
    manifest = load_manifest(out)
    print(f"wrote {args.arch} model ({args.layers} blocks, hidden {args.hidden}) to {out}")
    print(f"manifest {manifest.manifest_hash().hex()}")
    return 0
