"""Stateless checks of signed receipts (parse, node signature, client counter-signature),
run in-line or spread over worker processes.

Parsing holds the GIL (and so does `cryptography`'s verify when libsodium is absent, see
protocol/sodium.py), so threads do not help; with `verify_workers > 0` batches of 64+
receipts are split across processes, which receive the JSON objects and return
ready-to-insert column values.

Each worker owns one pipe; the request thread itself sends the parts and waits for the
answers (no executor threads in between, whose GIL hand-offs cost the event loop more
than the pickling). A request that finds no idle worker reuses one it already holds, or
waits only while holding none, so concurrent requests never deadlock. A worker that dies
is replaced and its part checked in-line.
"""

from __future__ import annotations

import multiprocessing
import pickle
import queue
import signal
from collections import deque
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from protocol.identity import verify_signature
from protocol.receipts import ZERO32, SignedReceipt, ack_message

MIN_PARALLEL = 64  # smaller batches are cheaper to check in-line


@dataclass(frozen=True)
class Checked:
    """One receipt after the stateless checks: `problem` is None when it may be stored."""

    id: str
    problem: str | None
    row: dict[str, Any] | None = None  # columns that depend on the receipt alone
    acked: bool = False


def check_item(item: Any) -> Checked:
    try:
        sr = SignedReceipt.from_json(item)
    except (ValueError, TypeError, AttributeError) as exc:
        claimed = item.get("id") if isinstance(item, dict) else None
        return Checked(claimed if isinstance(claimed, str) else "", f"malformed: {exc}")
    r = sr.receipt
    rid = sr.id
    rid_hex = rid.hex()
    if not verify_signature(r.node_key, r.encode(), sr.node_signature):
        return Checked(rid_hex, "bad node signature")
    acked = sr.client_signature is not None
    if acked and not verify_signature(r.client_key, ack_message(rid), sr.client_signature):  # type: ignore[arg-type]
        return Checked(rid_hex, "bad client counter-signature")
    row = {
        "id": rid_hex, "node_key": r.node_key.hex(), "client_key": r.client_key.hex(), "model": r.model.hex(),
        "block_start": r.block_start, "block_end": r.block_end, "kind": int(r.kind), "batch": r.batch,
        "tokens": r.tokens, "ticket_id": r.ticket_id.hex() if r.ticket_id != ZERO32 else "", "price": r.price,
        "timestamp_ms": r.timestamp_ms, "acked": acked, "raw": sr.to_bytes(),
    }
    return Checked(rid_hex, None, row, acked)


def _check_chunk(chunk: list[Any]) -> list[Checked]:
    return [check_item(item) for item in chunk]


def _worker_main(conn: Connection) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C stops the server, which closes our pipe
    while True:
        try:
            chunk = conn.recv()
        except (EOFError, OSError):
            return
        conn.send(_check_chunk(chunk))


class _Worker:
    """One slot of the pool: a process and its end of the pipe (restarted in place)."""

    def __init__(self, mp: Any):
        self._mp = mp
        self.start()

    def start(self) -> None:
        self.conn, child = self._mp.Pipe()
        self.process = self._mp.Process(target=_worker_main, args=(child,), daemon=True, name="corolla-verify")
        self.process.start()
        child.close()

    def restart(self) -> None:
        self.stop(timeout=0)
        self.start()

    def stop(self, timeout: float = 2) -> None:
        self.conn.close()
        self.process.join(timeout)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(1)


class SignaturePool:
    def __init__(self, workers: int = 0):
        self.workers = workers
        mp = multiprocessing.get_context("spawn")  # no inherited engines, sockets or threads
        self._slots = [_Worker(mp) for _ in range(workers)]
        self._idle: queue.SimpleQueue[_Worker] = queue.SimpleQueue()
        for slot in self._slots:
            self._idle.put(slot)
        self._closed = False

    def check(self, items: list[Any]) -> list[Checked]:
        if self.workers == 0 or self._closed or len(items) < MIN_PARALLEL:
            return _check_chunk(items)
        size = (len(items) + self.workers - 1) // self.workers
        parts = [items[i:i + size] for i in range(0, len(items), size)]
        results: list[list[Checked] | None] = [None] * len(parts)
        held: deque[tuple[_Worker, int]] = deque()  # workers holding one of our parts, oldest first
        try:
            for index, part in enumerate(parts):
                try:
                    worker = self._idle.get_nowait()
                except queue.Empty:
                    if held:  # reuse our own oldest worker rather than wait on others' (no deadlock)
                        worker, done = held[0]
                        results[done] = self._receive(worker, parts[done])
                        held.popleft()
                    else:
                        worker = self._idle.get()
                if self._send(worker, part):
                    held.append((worker, index))
                else:
                    self._idle.put(worker)
                    results[index] = _check_chunk(part)
            while held:
                worker, done = held[0]
                results[done] = self._receive(worker, parts[done])
                held.popleft()
                self._idle.put(worker)
        finally:  # only after an unexpected error: never lose a worker, never leave it a stale answer
            for worker, _ in held:
                worker.restart()
                self._idle.put(worker)
        return [checked for part_result in results for checked in part_result or ()]

    def _send(self, worker: _Worker, part: list[Any]) -> bool:
        """Hand `part` to `worker`; False (part not sent) when it cannot be pickled or the
        worker is gone (then it is restarted)."""
        try:
            data = pickle.dumps(part, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception:  # e.g. RecursionError on absurdly nested JSON: check it in-line
            return False
        try:
            worker.conn.send_bytes(data)
            return True
        except (OSError, ValueError):
            if not self._closed:
                worker.restart()
            return False

    def _receive(self, worker: _Worker, part: list[Any]) -> list[Checked]:
        """The worker's answer; if it died, it is restarted and the part checked in-line."""
        try:
            answer: list[Checked] = worker.conn.recv()
            return answer
        except (EOFError, OSError):
            if not self._closed:
                worker.restart()
            return _check_chunk(part)

    def close(self) -> None:
        self._closed = True
        for slot in self._slots:
            slot.stop()
