"""The few ledger endpoints the verifier uses (ledger/README.md), over signed HTTP.

Reads are public; the one write (posting a verdict) is signed with the verifier's key
via protocol/request_auth.py. The openings evidence travels with the verdict as a
base64 `evidence` field next to the SignedVerdict JSON, so the ledger can keep it for
anyone who wants to recheck.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import httpx

from protocol.identity import Identity
from protocol.receipts import SignedReceipt
from protocol.request_auth import sign_request
from protocol.verdicts import SignedVerdict


class LedgerError(Exception):
    """The ledger refused a request or could not be reached."""


class LedgerClient:
    def __init__(self, base_url: str, identity: Identity | None = None, *, timeout_s: float = 30.0):
        self.base_url = base_url.rstrip("/")
        self.identity = identity
        self.http = httpx.Client(base_url=self.base_url, timeout=timeout_s)

    def close(self) -> None:
        self.http.close()

    def _get(self, path: str, **params: Any) -> Any:
        try:
            resp = self.http.get(path, params={k: v for k, v in params.items() if v is not None})
        except httpx.HTTPError as exc:
            raise LedgerError(f"ledger {self.base_url} unreachable: {exc}") from exc
        if resp.status_code != 200:
            raise LedgerError(f"GET {path}: {resp.status_code} {resp.text[:200]}")
        return resp.json()

    def nodes(self) -> list[dict[str, Any]]:
        return list(self._get("/v1/nodes"))

    def due(self, *, rate: float, node: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        """Receipts without a verdict whose ledger-side draw is below `rate`, oldest first."""
        return list(self._get("/v1/receipts/due", rate=rate, node=node, limit=limit))

    def receipt(self, receipt_id: str) -> SignedReceipt:
        return SignedReceipt.from_json(self._get(f"/v1/receipts/{receipt_id}")["signed"])

    def receipts_of_client(self, client_key: str, limit: int = 200) -> list[dict[str, Any]]:
        return list(self._get("/v1/receipts", client=client_key, limit=limit))

    def last_ingested_ms(self, node_key: str, client_key: str) -> int | None:
        """When the ledger ingested the newest receipt of this node for this client (any
        kind, sampled or not; None if it holds none): how the service tells that a
        client's sessions with a node have gone quiet."""
        newest = self._get("/v1/receipts", node=node_key, client=client_key, limit=1)
        return int(newest[0]["ingested_ms"]) if newest else None

    def verdict(self, verdict_id: str) -> dict[str, Any]:
        return dict(self._get(f"/v1/verdicts/{verdict_id}"))

    def post_verdict(self, signed: SignedVerdict, evidence: bytes) -> dict[str, Any]:
        if self.identity is None:
            raise LedgerError("posting a verdict needs the verifier's key")
        body_obj = signed.to_json()
        if evidence:
            body_obj["evidence"] = base64.b64encode(evidence).decode()
        body = json.dumps(body_obj).encode()
        headers = sign_request(self.identity, "POST", "/v1/verdicts", body)
        headers["Content-Type"] = "application/json"
        try:
            resp = self.http.post("/v1/verdicts", content=body, headers=headers)
        except httpx.HTTPError as exc:
            raise LedgerError(f"ledger {self.base_url} unreachable: {exc}") from exc
        if resp.status_code != 200:
            raise LedgerError(f"POST /v1/verdicts: {resp.status_code} {resp.text[:200]}")
        return dict(resp.json())
