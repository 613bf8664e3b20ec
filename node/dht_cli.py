"""`corolla dht`: a bootstrap peer for the swarm's DHT (nodes and clients join through it)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys

logger = logging.getLogger("corolla.dht")


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="corolla dht", description="Run a DHT bootstrap peer.")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=0, help="TCP port to listen on (0 = any free port)")
    p.add_argument("--initial-peers", nargs="*", default=[], metavar="MADDR",
                   help="other bootstrap peers to join (full multiaddrs with /p2p/ID)")
    p.add_argument("--ready-file", help="write {peer_id, maddrs, pid} as JSON here once serving")
    return p.parse_args(argv)


async def serve(args: argparse.Namespace) -> None:
    from node.dht_peer import start_dht_peer, visible_maddrs
    from node.ready_file import write_ready_file

    dht = await start_dht_peer(args.initial_peers, args.host, args.port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    maddrs = await visible_maddrs(dht)
    peer_id = dht.peer_id.to_base58()
    if args.ready_file:
        write_ready_file(args.ready_file, {"peer_id": peer_id, "maddrs": maddrs, "pid": os.getpid()})
    logger.info("DHT peer %s serving at %s", peer_id, " ".join(maddrs))
    print(" ".join(maddrs), flush=True)
    await stop.wait()
    logger.info("DHT peer %s shutting down", peer_id)
    await dht.shutdown()


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if not 0 <= args.port < 65536:
        print(f"corolla dht: --port must be in 0..65535, got {args.port}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        asyncio.run(serve(args))
    except ValueError as exc:  # malformed multiaddr in --initial-peers, etc.
        print(f"corolla dht: {exc}", file=sys.stderr)
        return 2
    return 0
