"""Signed-request auth: unsigned, forged, stale, tampered and replayed writes are refused."""

from __future__ import annotations

import json
import time

from protocol.identity import Identity
from protocol.request_auth import sign_request
from tests.ledger.harness import LedgerProcess


def _post(ledger: LedgerProcess, path: str, raw: bytes, headers: dict[str, str]) -> int:
    c = ledger.client()
    return c.http.post(path, content=raw, headers={"content-type": "application/json", **headers}).status_code


def test_writes_need_a_valid_fresh_signature_and_replays_are_rejected(ledger: LedgerProcess) -> None:
    me = Identity.generate()
    body = json.dumps({"cap": 5, "ttl_s": 60}).encode()
    path = "/v1/tickets"
    assert _post(ledger, path, body, {}) == 401
    headers = sign_request(me, "POST", path, body)
    assert _post(ledger, path, body.replace(b"5", b"6"), headers) == 401  # tampered body
    assert _post(ledger, "/v1/receipts", body, headers) in (401, 422)  # signed for another path
    forged = dict(headers, **{"X-Corolla-Key": Identity.generate().public_hex})
    assert _post(ledger, path, body, forged) == 401
    stale = sign_request(me, "POST", path, body, now_ms=int(time.time() * 1000) - 3_600_000)
    assert _post(ledger, path, body, stale) == 401
    # a valid request is authenticated (then refused for lack of credits: 409)...
    assert _post(ledger, path, body, headers) == 409
    # ...and the very same headers again are a replay
    c = ledger.client()
    replay = c.http.post(path, content=body, headers={"content-type": "application/json", **headers})
    assert replay.status_code == 401 and "replayed" in replay.json()["detail"]


def test_reads_of_public_data_need_no_signature(ledger: LedgerProcess) -> None:
    c = ledger.client()
    assert c.get("/v1/ledger-key").json()["ledger_key"] == ledger.ledger_key
    assert c.get("/v1/epochs").status_code == 200
    assert c.get("/v1/check").json()["ok"]


def test_only_admins_close_epochs_and_grant_roles(ledger: LedgerProcess) -> None:
    stranger = ledger.client()
    assert stranger.post("/v1/epochs/close", {}).status_code == 403
    assert stranger.post("/v1/roles", {"key": stranger.identity.public_hex, "role": "verifier"}).status_code == 403
    admin = ledger.client(ledger.admin)
    r = admin.post("/v1/roles", {"key": stranger.identity.public_hex, "role": "verifier"})
    assert r.status_code == 200 and r.json()["role"] == "verifier"
