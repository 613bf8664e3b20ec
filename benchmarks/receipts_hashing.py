"""Micro-benchmark of what every receipt costs: tensor hashing, encoding, signing, outbox append.

    python benchmarks/receipts_hashing.py [--mib 8] [--repeat 20] [--json]

Prints a table; with --json the last line is one JSON object. BLAKE3 and SHA-256 are
measured side by side in the same run on the same tensor, which is how protocol/hashing.py
chose its HASH.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import blake3
import torch

from node.receipt_outbox import ReceiptOutbox
from protocol.hashing import digest
from protocol.identity import Identity, verify_signature
from protocol.receipts import Kind, Receipt, SignedReceipt
from protocol.tensor_hash import tensor_bytes, tensor_digest


def best_of(fn: Callable[[], object], repeat: int, inner: int = 1) -> float:
    """Best wall time of `inner` calls, over `repeat` tries, per call (seconds)."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        best = min(best, (time.perf_counter() - t0) / inner)
    return best


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mib", type=int, default=8, help="tensor size in MiB for the hashing figures (default 8)")
    p.add_argument("--repeat", type=int, default=20, help="tries per figure; the best is reported (default 20)")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = p.parse_args(argv)

    x = torch.randn(args.mib * 1024 * 1024 // 4)
    xb = x.to(torch.bfloat16)
    raw = tensor_bytes(x)
    mb = x.numel() * 4 / 1e6
    figures: dict[str, float] = {
        "tensor_mib": float(args.mib),
        "blake3_mb_per_s": mb / best_of(lambda: blake3.blake3(raw).digest(), args.repeat),
        "sha256_mb_per_s": mb / best_of(lambda: hashlib.sha256(raw).digest(), args.repeat),
        "tensor_digest_mb_per_s": mb / best_of(lambda: tensor_digest(x), args.repeat),
        "tensor_digest_bf16_mb_per_s": (mb / 2) / best_of(lambda: tensor_digest(xb), args.repeat),
    }
    small = torch.randn(1, 1, 4096)  # one token's hidden state in a 4k-wide model
    figures["tensor_digest_16kib_us"] = 1e6 * best_of(lambda: tensor_digest(small), args.repeat, 1000)

    node, client = Identity.generate(), Identity.generate()
    receipt = Receipt(node.public_key, client.public_key, digest(b"m"), 0, 8, Kind.INFERENCE, bytes(16), 1, 1, 1,
                      digest(b"i"), digest(b"o"), digest(b"r"), digest(b"q"), 1_795_000_000_000)
    signed = receipt.sign(node)
    enc = receipt.encode()

    def fresh_encode() -> bytes:
        return Receipt.decode(enc).encode()  # decode + encode of an uncached receipt

    figures["receipt_encode_decode_us"] = 1e6 * best_of(fresh_encode, args.repeat, 1000)
    figures["receipt_id_us"] = 1e6 * best_of(lambda: digest(enc), args.repeat, 1000)
    figures["ed25519_sign_us"] = 1e6 * best_of(lambda: node.sign(enc), args.repeat, 500)
    figures["ed25519_verify_us"] = 1e6 * best_of(
        lambda: verify_signature(node.public_key, enc, signed.node_signature), args.repeat, 500)
    acked = signed.countersign(client)
    figures["signed_receipt_to_bytes_from_bytes_us"] = 1e6 * best_of(
        lambda: SignedReceipt.from_bytes(acked.to_bytes()), args.repeat, 1000)

    with tempfile.TemporaryDirectory() as tmp:
        for mode in ("FULL", "NORMAL"):
            outbox = ReceiptOutbox(Path(tmp) / f"{mode}.sqlite", synchronous=mode)
            batch = [dataclasses.replace(receipt, step=i).sign(node) for i in range(300)]
            t0 = time.perf_counter()
            for s in batch:
                outbox.append(s)
            figures[f"outbox_append_{mode.lower()}_us"] = 1e6 * (time.perf_counter() - t0) / len(batch)
            outbox.close()

    width = max(len(k) for k in figures)
    print(f"{'figure':<{width}}  value")
    for k, v in figures.items():
        print(f"{k:<{width}}  {v:,.2f}")
    print(f"blake3 / sha256 speed ratio: {figures['blake3_mb_per_s'] / figures['sha256_mb_per_s']:.2f}x")
    if args.json:
        print(json.dumps({k: round(v, 3) for k, v in figures.items()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
