"""Stateless checks of signed receipts (parse, node signature, client counter-signature),
run in-line or spread over worker processes.

`cryptography` holds the GIL while verifying an Ed25519 signature (two per receipt), so
threads do not help; with `verify_workers > 0` batches of 64+ receipts are split across
processes, which receive the JSON objects and return ready-to-insert column values.
"""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
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
    if not verify_signature(r.node_key, r.encode(), sr.node_signature):
        return Checked(rid.hex(), "bad node signature")
    if sr.client_signature is not None and not verify_signature(r.client_key, ack_message(rid), sr.client_signature):
        return Checked(rid.hex(), "bad client counter-signature")
    row = {
        "id": rid.hex(), "node_key": r.node_key.hex(), "client_key": r.client_key.hex(), "model": r.model.hex(),
        "block_start": r.block_start, "block_end": r.block_end, "kind": int(r.kind), "batch": r.batch,
        "tokens": r.tokens, "ticket_id": r.ticket_id.hex() if r.ticket_id != ZERO32 else "", "price": r.price,
        "timestamp_ms": r.timestamp_ms, "acked": sr.client_signature is not None, "raw": sr.to_bytes(),
    }
    return Checked(rid.hex(), None, row, sr.client_signature is not None)


def _check_chunk(chunk: list[Any]) -> list[Checked]:
    return [check_item(item) for item in chunk]


class SignaturePool:
    def __init__(self, workers: int = 0):
        self.workers = workers
        self._executor = ProcessPoolExecutor(workers) if workers > 0 else None

    def check(self, items: list[Any]) -> list[Checked]:
        if self._executor is None or len(items) < MIN_PARALLEL:
            return _check_chunk(items)
        n = self.workers
        size = (len(items) + n - 1) // n
        out: list[Checked] = []
        for part in self._executor.map(_check_chunk, [items[i:i + size] for i in range(0, len(items), size)]):
            out.extend(part)
        return out

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(cancel_futures=True)
