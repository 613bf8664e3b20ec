"""Ships receipts from the outbox to the ledger in signed batches, surviving outages.

`POST {ledger}/v1/receipts` with `{"receipts": [SignedReceipt.to_json(), ...]}`, signed
with the node identity (protocol.request_auth). The ledger answers
`{"accepted": [id], "duplicates": [id], "rejected": [{"id", "reason"}]}`; each listed
receipt is marked in the outbox (rejected ones keep the reason). Anything else (network
error, 5xx, 429, 401 from a skewed clock, ...) leaves the batch pending and backs off
exponentially with full jitter, capped; a 413 halves the batch. Nothing is marked before
the ledger has answered, so a crash at any point loses nothing: at worst a batch is sent
again and the ledger reports duplicates.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx

from node.receipt_outbox import ReceiptOutbox
from protocol.identity import Identity
from protocol.receipts import SignedReceipt
from protocol.request_auth import sign_request

log = logging.getLogger(__name__)


@dataclass
class ShipperStats:
    batches: int = 0
    accepted: int = 0
    duplicates: int = 0
    rejected: int = 0
    failures: int = 0
    last_error: str | None = None


class ReceiptShipper:
    """Background thread draining a ReceiptOutbox into a ledger. `start()`, `flush()`, `stop()`."""

    def __init__(self, outbox: ReceiptOutbox, ledger_url: str, identity: Identity, batch_size: int = 100,
                 interval_s: float = 1.0, *, backoff_base_s: float = 0.5, backoff_cap_s: float = 30.0,
                 timeout_s: float = 10.0):
        self.outbox = outbox
        self.identity = identity
        self.url = ledger_url.rstrip("/") + "/v1/receipts"
        self.path = urlsplit(self.url).path
        self.batch_size = batch_size
        self.interval_s = interval_s
        self.backoff_base_s = backoff_base_s
        self.backoff_cap_s = backoff_cap_s
        self.stats = ShipperStats()
        self._client = httpx.Client(timeout=timeout_s)
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._flushing = 0  # >0 while a flush() wants unacked receipts shipped now
        self._flush_lock = threading.Lock()
        self._failures = 0
        self._thread: threading.Thread | None = None

    # ----- lifetime ----------------------------------------------------------------------

    def start(self) -> ReceiptShipper:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="receipt-shipper", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 15.0) -> None:
        """Stop after the request in flight (if any) has been answered and recorded."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        self._client.close()

    def __enter__(self) -> ReceiptShipper:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def notify(self) -> None:
        """Wake the shipper now (e.g. right after an acked receipt was appended)."""
        self._wake.set()

    def flush(self, timeout: float) -> bool:
        """Ship everything now, acked or not; True if the outbox has nothing left to ship."""
        deadline = time.monotonic() + timeout
        with self._flush_lock:
            self._flushing += 1
        try:
            while time.monotonic() < deadline:
                if not self.outbox.pending(1, include_unacked=True):
                    return True
                if self._thread is None:  # not started: ship from the caller's thread
                    if not self._ship_once(include_unacked=True):
                        time.sleep(min(self._backoff_s(), max(0.0, deadline - time.monotonic())))
                else:
                    self._wake.set()
                    time.sleep(0.02)
            return not self.outbox.pending(1, include_unacked=True)
        finally:
            with self._flush_lock:
                self._flushing -= 1

    # ----- work --------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                shipped_all = self._ship_once(include_unacked=self._flushing > 0)
            except Exception:  # keep shipping whatever happens; the traceback goes to the log
                log.exception("receipt shipper: unexpected error")
                shipped_all = False
                self._failures += 1
            if self._stop.is_set():
                break
            if self._failures:
                wait = self._backoff_s()
            elif shipped_all:
                wait = self.interval_s
            else:
                continue  # a full batch went out: more may be waiting
            self._wake.wait(wait)
            self._wake.clear()

    def _backoff_s(self) -> float:
        """Equal jitter: uniform in [c/2, c] with c = min(cap, base * 2^failures)."""
        ceiling = min(self.backoff_cap_s, self.backoff_base_s * 2 ** min(self._failures, 30))
        return random.uniform(ceiling / 2, ceiling)

    def _ship_once(self, include_unacked: bool) -> bool:
        """Send one batch; True when nothing more is due right now (or on failure)."""
        batch = self.outbox.pending(self.batch_size, include_unacked=include_unacked)
        if not batch:
            return True
        ok = self._post(batch)
        return not ok or len(batch) < self.batch_size

    def _post(self, batch: list[SignedReceipt]) -> bool:
        body = json.dumps({"receipts": [s.to_json() for s in batch]}, separators=(",", ":")).encode()
        headers = sign_request(self.identity, "POST", self.path, body)
        headers["Content-Type"] = "application/json"
        started = time.monotonic()
        try:
            response = self._client.post(self.url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            return self._failed(f"{type(exc).__name__}: {exc}")
        if response.status_code == 413 and self.batch_size > 1:
            self.batch_size = max(1, self.batch_size // 2)
            log.warning("receipt shipper: ledger refused a batch as too large; batch size now %d", self.batch_size)
            return True
        if response.status_code != 200:
            return self._failed(f"HTTP {response.status_code}: {response.text[:200]}")
        try:
            answer = response.json()
            accepted = {bytes.fromhex(x) for x in answer.get("accepted", [])}
            duplicates = {bytes.fromhex(x) for x in answer.get("duplicates", [])}
            rejected = {bytes.fromhex(x["id"]): str(x.get("reason", "")) for x in answer.get("rejected", [])
                        if x.get("id")}
        except (ValueError, TypeError, AttributeError, KeyError):
            return self._failed("ledger answered with malformed JSON")
        sent = {s.id: s for s in batch}
        self.outbox.mark_shipped([sent[i] for i in accepted if i in sent], "accepted")
        self.outbox.mark_shipped([sent[i] for i in duplicates - accepted if i in sent], "duplicate")
        rejected = {i: r for i, r in rejected.items() if i in sent and i not in accepted | duplicates}
        if rejected:
            self.outbox.mark_rejected(rejected)
            for rid, reason in list(rejected.items())[:3]:
                log.warning("receipt shipper: ledger rejected %s: %s", rid.hex()[:16], reason)
        answered = len(accepted | duplicates | set(rejected))
        if answered == 0:
            return self._failed("ledger answered without listing any receipt of the batch")
        if self._failures:
            log.info("receipt shipper: ledger reachable again after %d failed attempts", self._failures)
        self._failures = 0
        self.stats.batches += 1
        self.stats.accepted += len(accepted)
        self.stats.duplicates += len(duplicates - accepted)
        self.stats.rejected += len(rejected)
        log.info("receipt shipper: batch of %d -> %d accepted, %d duplicate, %d rejected in %.0f ms", len(batch),
                 len(accepted), len(duplicates - accepted), len(rejected), 1000 * (time.monotonic() - started))
        return True

    def _failed(self, error: str) -> bool:
        if self._failures == 0:
            log.warning("receipt shipper: cannot deliver to %s (%s); retrying with backoff", self.url, error)
        self._failures += 1
        self.stats.failures += 1
        self.stats.last_error = error
        return False
