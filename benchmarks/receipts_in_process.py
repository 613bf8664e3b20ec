"""CPU a node and a client spend on inference receipts, measured in one process, off the network.

benchmarks/receipts.py times whole swarms on a shared machine, where a few percent move
from run to run. This measures the fixed cost behind those percent directly, by thread CPU
time: one node's span (the first half of the benchmark Llama) runs sessions of decode
steps in this process, exactly as a node with `receipt_with_next` does per step: it keeps
the blocks' outputs, holds the step's receipt and every `receipt_batch` steps signs and
stores the held ones (node/receipt_signing.py `HeldReceipts`, a real SQLite outbox), with
the client's counter-signatures of the previous batch attached as they would arrive with a
step. The client side checks and counter-signs each receipt (client/receipt_book.py
`ReceiptBook.verify`: signature, request, hashes of what was sent and received).

Printed per token: the node's compute, its receipt work, and the client's check of one
receipt (a generation pays the latter once per hop). Sessions alternate with none of the
receipt work being timed, so only receipt code is in the receipt figures.

    .venv/bin/python benchmarks/receipts_in_process.py [--layers 8 --hidden 512 --tokens 32 --sessions 16] [--json]

With --json the last line is one JSON object: node_compute_us_per_token,
node_receipt_us_per_token, client_check_us_per_receipt and node_receipt_fraction (the
node's receipt work over its compute).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, default=8, help="blocks of the benchmark Llama; a node serves half (default 8)")
    p.add_argument("--hidden", type=int, default=512, help="hidden size (default 512)")
    p.add_argument("--tokens", type=int, default=32, help="decode steps per session (default 32)")
    p.add_argument("--sessions", type=int, default=16, help="sessions timed (default 16; medians are reported)")
    p.add_argument("--receipt-batch", type=int, default=4, help="receipts signed and stored together (default 4)")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    return p.parse_args(argv)


def measure(model: Path, layers: int, tokens: int, sessions: int, receipt_batch: int, workdir: Path) -> dict[str, Any]:
    """Median over sessions of µs per token: node compute, node receipt work, client check."""
    import torch

    from client.receipt_book import ReceiptBook
    from client.remote_calls import CallResult
    from models.span import BlockSpan
    from node.block_steps import step_blocks
    from node.receipt_outbox import ReceiptOutbox
    from node.receipt_signing import HeldReceipts, ReceiptSigner
    from protocol.dht_keys import NodeAnnouncement
    from protocol.identity import Identity
    from protocol.messages import Frame, RequestMeta, ResponseMeta, tensor_to_wire
    from protocol.receipts import Kind, request_ref_for_step

    torch.set_num_threads(1)
    span = BlockSpan.load(model, 0, layers // 2)
    manifest = span.manifest.manifest_hash()
    node = Identity.load_or_create(workdir / "in-process-node.key")
    book = ReceiptBook(Identity.load_or_create(workdir / "in-process-client.key"))
    outbox = ReceiptOutbox(workdir / "in-process-outbox.sqlite", synchronous="NORMAL")
    signer = ReceiptSigner(node, outbox, span, manifest)
    ann = NodeAnnouncement("bench", 0, layers // 2, 1.0, 1.0, "online", node_key=node.public_key.hex())
    generator = torch.Generator().manual_seed(0)
    figures: dict[str, list[float]] = {"compute": [], "receipts": [], "check": []}
    try:
        for _ in range(sessions + 1):  # the first one warms up
            session_id = os.urandom(16)
            meta = RequestMeta(manifest, 0, layers // 2, client_key=book.public_key, session_id=session_id)
            state = signer.new_session(meta, 1, tokens + 8)
            held = HeldReceipts(signer, receipt_batch)
            cache = span.new_cache(1, tokens + 8)
            list(step_blocks(span, torch.randn(1, 8, span.hidden_size, generator=generator), cache))
            compute = receipts = check = 0.0
            results: dict[int, CallResult] = {}
            acks: list[list[bytes]] = []
            for step in range(1, tokens + 1):
                hidden = torch.randn(1, 1, span.hidden_size, generator=generator)
                frame = Frame("step", {"step": step}, [tensor_to_wire(hidden)])
                started = time.thread_time()
                per_block = list(step_blocks(span, hidden, cache))
                computed = time.thread_time()
                if acks:  # the counter-signatures of the last batch ride with this step
                    signer.queue_ack({"acks": acks}, hold=True)
                    acks = []
                frames = held.add(partial(signer.sign_step, state, frame, hidden, per_block[-1], per_block, step))
                signed = time.thread_time()
                compute, receipts = compute + computed - started, receipts + signed - computed
                results[step] = CallResult(per_block[-1], ResponseMeta(receipt_follows=True), frame.tensors[0],
                                           tensor_to_wire(per_block[-1]), 0.0)
                for answered, receipt in zip(range(step - len(frames) + 1, step + 1), frames, strict=True):
                    result = results.pop(answered)
                    result.response = ResponseMeta(receipt=receipt.meta["receipt"])
                    started = time.thread_time()
                    countersigned = book.verify(ann, meta, Kind.INFERENCE, answered,
                                                request_ref_for_step(session_id, answered), result, None)
                    check += time.thread_time() - started
                    acks.append([countersigned.id, countersigned.client_signature])
            started = time.thread_time()
            held.take()  # the session's end: whatever is still held
            receipts += time.thread_time() - started
            figures["compute"].append(compute / tokens * 1e6)
            figures["receipts"].append(receipts / tokens * 1e6)
            figures["check"].append(check / (tokens - len(results)) * 1e6)
    finally:
        signer.writer.close()
        outbox.close()
    compute_us, receipt_us, check_us = (statistics.median(figures[k][1:]) for k in ("compute", "receipts", "check"))
    return {"node_compute_us_per_token": round(compute_us, 1), "node_receipt_us_per_token": round(receipt_us, 1),
            "client_check_us_per_receipt": round(check_us, 1),
            "node_receipt_fraction": round(receipt_us / compute_us, 4), "receipts_checked": len(book.receipts)}


def print_table(figures: dict[str, Any], layers: int, hidden: int, receipt_batch: int) -> None:
    print(f"receipt CPU in one process — node span {layers // 2} of {layers} blocks x hidden {hidden}, "
          f"receipts signed {receipt_batch} at a time (thread CPU, median over sessions)")
    print(f"{'node compute (µs/token)':40} {figures['node_compute_us_per_token']:>10.1f}")
    print(f"{'node receipt work (µs/token)':40} {figures['node_receipt_us_per_token']:>10.1f}"
          f"   {figures['node_receipt_fraction']:.1%} of its compute")
    print(f"{'client check + counter-sign (µs/receipt)':40} {figures['client_check_us_per_receipt']:>10.1f}"
          "   paid once per hop and token")


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    from protocol.messages import MAX_RECEIPT_BATCH

    if not 1 <= args.receipt_batch <= MAX_RECEIPT_BATCH:
        print(f"receipts_in_process: --receipt-batch must be from 1 to {MAX_RECEIPT_BATCH}", file=sys.stderr)
        return 2
    if args.tokens < args.receipt_batch or args.sessions < 1 or args.layers < 2:
        print("receipts_in_process: need --tokens >= --receipt-batch, --sessions >= 1 and --layers >= 2",
              file=sys.stderr)
        return 2
    from models.make_model import make_model

    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        try:
            model = make_model("llama", workdir / "model", layers=args.layers, hidden=args.hidden, seed=0)
        except ValueError as exc:  # e.g. a hidden size the Llama config cannot take
            print(f"receipts_in_process: {exc}", file=sys.stderr)
            return 2
        figures = measure(model, args.layers, args.tokens, args.sessions, args.receipt_batch, workdir)
    print_table(figures, args.layers, args.hidden, args.receipt_batch)
    if args.json:
        print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
