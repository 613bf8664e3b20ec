"""Receipts and a stand-in ledger for the outbox tests (torch-free, so subprocesses start fast).

`StubLedger` is a real HTTP server on 127.0.0.1 that checks the request signature with
protocol.request_auth, dedups receipt ids like the ledger does, and can play an outage
(503). The real ledger (ledger/) answers the same JSON.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from protocol.hashing import digest
from protocol.identity import Identity
from protocol.receipts import Kind, Receipt, SignedReceipt
from protocol.request_auth import AuthError, verify_request

NODE = Identity.from_private_bytes(hashlib.sha256(b"outbox-test-node").digest())
CLIENT = Identity.from_private_bytes(hashlib.sha256(b"outbox-test-client").digest())


def make_receipt(i: int, session: bytes = b"s" * 16, acked: bool = False) -> SignedReceipt:
    r = Receipt(
        node_key=NODE.public_key, client_key=CLIENT.public_key, model=digest(b"model"), block_start=0,
        block_end=2, kind=Kind.INFERENCE, session_id=session, step=i, batch=1, tokens=1,
        input_hash=digest(b"in%d" % i), output_hash=digest(b"out%d" % i), blocks_root=digest(b"root%d" % i),
        request_ref=digest(b"req%d" % i), timestamp_ms=1_795_000_000_000 + i,
    )
    signed = r.sign(NODE)
    return signed.countersign(CLIENT) if acked else signed


class StubLedger:
    """POST /v1/receipts like the ledger: signed requests, idempotent on receipt id."""

    def __init__(self, reject_steps: frozenset[int] = frozenset(), max_batch: int = 1000):
        self.outage = False
        self.max_batch = max_batch
        self.accepted: dict[bytes, SignedReceipt] = {}
        self.deliveries: Counter[bytes] = Counter()  # successful (200) submissions per id
        self.requests = 0
        self.refused = 0
        self.reject_steps = reject_steps
        self.lock = threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                status, answer = stub.handle(dict(self.headers), self.path, body)
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def handle(self, headers: dict[str, str], path: str, body: bytes) -> tuple[int, dict]:
        with self.lock:
            self.requests += 1
            if self.outage:
                self.refused += 1
                return 503, {"detail": "ledger down for maintenance"}
            try:
                signer = verify_request(headers, "POST", path, body, int(time.time() * 1000))
            except AuthError as exc:
                return 401, {"detail": exc.reason}
            if path != "/v1/receipts" or signer != NODE.public_key:
                return 403, {"detail": "wrong path or signer"}
            items = json.loads(body)["receipts"]
            if len(items) > self.max_batch:
                return 413, {"detail": f"at most {self.max_batch} receipts per request"}
            answer: dict[str, list] = {"accepted": [], "duplicates": [], "rejected": []}
            for item in items:
                s = SignedReceipt.from_json(item)
                if not s.verify():
                    answer["rejected"].append({"id": s.id.hex(), "reason": "bad signature"})
                elif s.receipt.step in self.reject_steps:
                    answer["rejected"].append({"id": s.id.hex(), "reason": "unknown model manifest"})
                elif s.id in self.accepted and not (s.client_signature and not self.accepted[s.id].client_signature):
                    answer["duplicates"].append(s.id.hex())
                else:
                    new = s.id not in self.accepted
                    self.accepted[s.id] = s
                    answer["accepted" if new else "duplicates"].append(s.id.hex())
                self.deliveries[s.id] += 1
            return 200, answer

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
