"""`corolla node`: serve a span of a model's blocks to the swarm.

Also dispatches `corolla node receipts ...` and `corolla node earnings ...` to their own
modules. Start-up: load the span, measure it, join the DHT, register the RPC handlers,
announce, write --ready-file; on SIGINT/SIGTERM: withdraw the announcement, then stop.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib
import logging
import math
import os
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger("corolla.node")

SUBCOMMANDS = {"receipts": "node.receipts_cli", "earnings": "node.earnings_cli"}


class UsageError(ValueError):
    """A mistake on the command line: one line on stderr, exit code 2."""


@dataclass
class NodeConfig:
    model: str
    start: int
    end: int
    initial_peers: list[str]
    host: str
    port: int
    device: str
    dtype: str
    ready_file: str | None
    max_cache_tokens: int
    max_session_length: int
    max_payload_mb: int
    torch_threads: int
    key: str | None
    ledger: str | None
    outbox: str | None
    retention_mb: int = 512
    retention_s: float = 3600.0
    trust_ledger_keys: tuple[str, ...] = ()
    min_price: int = 1
    session_idle_timeout_s: float = 300.0


def parse_blocks(text: str) -> tuple[int, int]:
    try:
        start_s, end_s = text.split(":")
        start, end = int(start_s), int(end_s)
    except ValueError:
        raise UsageError(f"--blocks must look like START:END (e.g. 0:4), got {text!r}") from None
    if start < 0 or end <= start:
        raise UsageError(f"--blocks {text}: need 0 <= START < END")
    return start, end


def parse_args(argv: list[str]) -> NodeConfig:
    p = argparse.ArgumentParser(prog="corolla node", description="Serve a span of transformer blocks.",
                                epilog="Subcommands: `corolla node receipts ...`, `corolla node earnings ...`.")
    p.add_argument("model", help="model directory (from `corolla make-model`) or hub name")
    p.add_argument("--blocks", required=True, help="span of blocks to serve, START:END (END exclusive)")
    p.add_argument("--initial-peers", nargs="+", required=True, metavar="MADDR",
                   help="DHT bootstrap multiaddrs (from `corolla dht`)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=0, help="TCP port (0 = any free port)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where to run the blocks")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="compute dtype of the blocks")
    p.add_argument("--ready-file", help="write {peer_id, maddrs, pid, ...} as JSON here once serving")
    p.add_argument("--max-cache-tokens", type=int, default=65536,
                   help="attention-cache budget: sum of batch × max_length over open sessions")
    p.add_argument("--max-session-length", type=int, default=8192, help="longest inference session accepted")
    p.add_argument("--session-idle-timeout", type=float, default=300.0, metavar="SECONDS",
                   help="close an inference session (and free its attention cache) after this many seconds "
                        "without a step (default 300)")
    p.add_argument("--max-payload-mb", type=int, default=256, help="largest request payload accepted (MiB)")
    p.add_argument("--torch-threads", type=int, default=1,
                   help="torch intra-op threads (1 suits small models and shared machines)")
    p.add_argument("--key", help="node identity key file (created on first use); enables signed receipts")
    p.add_argument("--ledger", help="ledger URL to ship receipts to (needs --key)")
    p.add_argument("--outbox", help="SQLite receipt outbox (default: next to the key file)")
    p.add_argument("--trust-ledger-key", action="append", default=[], metavar="HEX",
                   help="honour priority tickets signed by this ledger key (repeatable; with --ledger the "
                        "ledger's own key is fetched at start-up)")
    p.add_argument("--min-price", type=int, default=1, help="lowest price per token a paid request is charged")
    p.add_argument("--retention-mb", type=int, default=512,
                   help="memory kept for answering challenges (activations behind recent receipts), MiB")
    p.add_argument("--retention-s", type=float, default=3600.0,
                   help="how long a receipt stays open to challenges, seconds")
    a = p.parse_args(argv)
    start, end = parse_blocks(a.blocks)
    if not 0 <= a.port < 65536:
        raise UsageError(f"--port must be in 0..65535, got {a.port}")
    if a.max_cache_tokens < 1 or a.max_session_length < 1 or a.max_payload_mb < 1 or a.torch_threads < 1:
        raise UsageError("--max-cache-tokens, --max-session-length, --max-payload-mb, --torch-threads must be >= 1")
    if not (math.isfinite(a.session_idle_timeout) and a.session_idle_timeout > 0):
        raise UsageError(f"--session-idle-timeout must be a number of seconds > 0, got {a.session_idle_timeout:g}")
    if a.retention_mb < 0 or a.retention_s < 0:
        raise UsageError("--retention-mb and --retention-s must be >= 0")
    for hex_key in a.trust_ledger_key:
        try:
            if len(bytes.fromhex(hex_key)) != 32:
                raise ValueError
        except ValueError:
            raise UsageError(f"--trust-ledger-key must be 64 hex characters, got {hex_key!r}") from None
    if a.trust_ledger_key and not a.key:
        raise UsageError("--trust-ledger-key needs --key (tickets name the node's key)")
    if a.min_price < 1:
        raise UsageError("--min-price must be >= 1")
    if a.ledger and not a.key:
        raise UsageError("--ledger needs --key (receipts are signed with the node's key)")
    return NodeConfig(a.model, start, end, a.initial_peers, a.host, a.port, a.device, a.dtype, a.ready_file,
                      a.max_cache_tokens, a.max_session_length, a.max_payload_mb, a.torch_threads, a.key,
                      a.ledger, a.outbox, a.retention_mb, a.retention_s, tuple(a.trust_ledger_key), a.min_price,
                      a.session_idle_timeout)


def load_span(cfg: NodeConfig) -> Any:
    import torch

    from models.span import BlockSpan

    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda given but no CUDA device is available")
    try:
        span = BlockSpan.load(cfg.model, cfg.start, cfg.end, dtype=getattr(torch, cfg.dtype), device=cfg.device)
    except FileNotFoundError as exc:
        raise UsageError(f"model not found: {exc}") from None
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    return span


def make_receipts(cfg: NodeConfig, span: Any, manifest_hash: bytes) -> Any:
    """Receipt signing, retention, outbox and shipper when --key is given (else None)."""
    if not cfg.key:
        return None
    from node.openings import RetentionStore
    from node.receipt_signing import ReceiptSigner

    signer = ReceiptSigner.from_config(cfg.key, cfg.outbox, cfg.ledger, span, manifest_hash)
    signer.retention = RetentionStore(cfg.retention_mb << 20, cfg.retention_s)
    return signer


def make_ticket_gate(cfg: NodeConfig, receipts: Any) -> Any:
    """Offline ticket checks when the node has a key and trusts at least one ledger (else None)."""
    if receipts is None or not (cfg.trust_ledger_keys or cfg.ledger):
        return None
    from node.ticket_check import TicketGate, fetch_ledger_key

    trusted = {bytes.fromhex(k) for k in cfg.trust_ledger_keys}
    if cfg.ledger:
        fetched = fetch_ledger_key(cfg.ledger)
        if fetched is not None:
            trusted.add(fetched)
    return TicketGate(receipts.public_key, frozenset(trusted), min_price_per_token=cfg.min_price)


async def serve(cfg: NodeConfig, stop: asyncio.Event | None = None,
                on_ready: Callable[[dict[str, Any]], None] | None = None, *, freeze_heap: bool = False) -> None:
    """Run a node until `stop` is set (default: until SIGINT/SIGTERM). `freeze_heap` (the node's
    own process only) moves everything loaded at start-up out of the garbage collector's sight."""
    import torch

    from node.announcer import Announcer
    from node.block_server import BlockServer, ServerLimits
    from node.dht_peer import start_dht_peer, visible_maddrs
    from node.ready_file import write_ready_file
    from node.task_pool import PriorityTaskQueue
    from node.throughput import measure_throughput
    from protocol.dht_keys import NodeAnnouncement

    torch.set_num_threads(cfg.torch_threads)
    span = load_span(cfg)
    manifest_hash = span.manifest.manifest_hash()
    step_rate, forward_rate = measure_throughput(span)
    try:
        receipts = make_receipts(cfg, span, manifest_hash)
    except ValueError as exc:  # KeyFileError: unreadable or too-open key file
        raise UsageError(str(exc)) from None
    logger.info("loaded blocks %d:%d of %s (%s, %s): %.0f steps/s, %.0f forward tokens/s", cfg.start, cfg.end,
                cfg.model, cfg.dtype, cfg.device, step_rate, forward_rate)

    dht = await start_dht_peer(cfg.initial_peers, cfg.host, cfg.port)
    queue = PriorityTaskQueue()  # paid before free, inference before bulk, free tasks age
    limits = ServerLimits(cfg.max_cache_tokens, cfg.max_session_length, cfg.max_payload_mb << 20,
                          session_idle_timeout_s=cfg.session_idle_timeout_s)
    server = BlockServer(span, manifest_hash, queue, limits, receipts, make_ticket_gate(cfg, receipts))
    await server.add_handlers(dht.p2p)
    if receipts is not None:
        await receipts.start()
    maddrs = await visible_maddrs(dht)
    peer_id = dht.peer_id.to_base58()
    announcement = NodeAnnouncement(
        peer_id=peer_id, start=cfg.start, end=cfg.end, throughput=step_rate, forward_tps=forward_rate,
        state="online", node_key=receipts.public_key.hex() if receipts is not None else "", maddrs=maddrs,
        dtype=cfg.dtype)
    announcer = Announcer(dht, manifest_hash, announcement)
    await announcer.start()

    if stop is None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
    if freeze_heap:
        # Everything loaded so far (torch, transformers, the model, hivemind) lives as long as
        # the node: keep it out of the collector's full passes, which otherwise walk it all
        # and stalled a step for ~0.25 s every few hundred tokens (benchmarks/receipts.py).
        gc.collect()
        gc.freeze()
    ready = {"peer_id": peer_id, "maddrs": maddrs, "pid": os.getpid(), "blocks": [cfg.start, cfg.end],
             "model": manifest_hash.hex(), "throughput": step_rate, "forward_tps": forward_rate,
             "node_key": announcement.node_key}
    if cfg.ready_file:
        write_ready_file(cfg.ready_file, ready)
    if on_ready is not None:
        on_ready(ready)
    logger.info("node %s serving blocks %d:%d at %s", peer_id, cfg.start, cfg.end, " ".join(maddrs))
    await stop.wait()
    logger.info("node %s shutting down", peer_id)
    try:
        await announcer.withdraw()
        if receipts is not None:
            await receipts.stop()
    finally:
        queue.shutdown()
        await dht.shutdown()


def main(argv: list[str]) -> int:
    if argv and argv[0] in SUBCOMMANDS:
        try:
            module = importlib.import_module(SUBCOMMANDS[argv[0]])
        except ModuleNotFoundError:
            print(f"corolla node: `{argv[0]}` is not available in this build", file=sys.stderr)
            return 2
        return int(module.main(argv[1:]) or 0)
    try:
        cfg = parse_args(argv)
    except UsageError as exc:
        print(f"corolla node: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("hivemind").setLevel(logging.WARNING)
    try:
        asyncio.run(serve(cfg, freeze_heap=True))
    except UsageError as exc:
        print(f"corolla node: {exc}", file=sys.stderr)
        return 2
    return 0
