"""500 malformed or hostile requests get 4xx answers (never 5xx) and leave the books consistent.

Our own generator, seeded: every path of /openapi.json with junk path and query values,
junk JSON bodies, valid bodies with one field mutated, wrong methods, garbage or replayed
signature headers — half of the bodies are validly signed so they reach the handlers.
"""

from __future__ import annotations

import json
import random
import re
from typing import Any

from protocol.identity import Identity
from protocol.request_auth import sign_request
from tests.ledger.harness import LedgerProcess, make_receipt

JUNK_STRINGS = ["", "0", "-1", "latest", "null", "\x00", "%00", "é" * 40, "0x" + "ab" * 20, "ab" * 32,
                "AB" * 32, "zz" * 32, "../../etc/passwd", "'; DROP TABLE receipt; --", "9" * 40, " ", "ab" * 1000]
JUNK_NUMBERS = [0, -1, 1, 2**31, 2**63, 2**64, 2**80, -(2**63), 1.5, float("1e308")]


def junk_value(rng: random.Random, depth: int = 0) -> Any:
    choice = rng.randrange(8 if depth < 3 else 5)
    if choice == 0:
        return rng.choice(JUNK_STRINGS)
    if choice == 1:
        return rng.choice(JUNK_NUMBERS)
    if choice == 2:
        return rng.choice([None, True, False])
    if choice == 3:
        return os_hex(rng, rng.choice([16, 32, 64, 65]))
    if choice == 4:
        return rng.choice([[], {}, "[]"])
    if choice == 5:
        return [junk_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    keys = ["receipts", "receipt", "cap", "ttl_s", "node_key", "verdict", "signature", "id", "key", "role",
            "ed25519_key", "evm_address", "arch", "config", "num_blocks", "block_hashes", "block_flops_per_token"]
    return {rng.choice(keys): junk_value(rng, depth + 1) for _ in range(rng.randrange(5))}


def os_hex(rng: random.Random, n: int) -> str:
    return bytes(rng.randrange(256) for _ in range(n)).hex()


def mutate(rng: random.Random, obj: Any) -> Any:
    """Replace one leaf somewhere in a valid body with junk."""
    if isinstance(obj, dict) and obj:
        key = rng.choice(list(obj))
        return {**obj, key: mutate(rng, obj[key]) if rng.random() < 0.6 else junk_value(rng)}
    if isinstance(obj, list) and obj:
        i = rng.randrange(len(obj))
        return obj[:i] + [mutate(rng, obj[i])] + obj[i + 1:]
    return junk_value(rng)


def test_hostile_requests_get_4xx_and_books_stay_consistent(ledger: LedgerProcess, manifest) -> None:  # type: ignore[no-untyped-def]
    rng = random.Random(20261122)
    c = ledger.client()
    spec = c.get("/openapi.json").json()
    c.post("/v1/manifests", manifest.to_json())
    node, client = Identity.generate(), Identity.generate()
    valid_bodies = [
        {"receipts": [make_receipt(node, client, manifest).to_json() for _ in range(3)]},
        {"cap": 10, "ttl_s": 60, "node_key": node.public_hex},
        {"key": node.public_hex, "role": "verifier"},
        manifest.to_json(),
        {"verdict": {"receipt_id": "00" * 32, "verifier_key": node.public_hex, "block": 0, "result": "fail",
                     "reason": "output_mismatch", "openings_hash": "11" * 32, "tolerance": 0.1, "measured": 1.0,
                     "timestamp_ms": 1}, "signature": "22" * 64},
    ]
    routes = [(path, method) for path, ops in spec["paths"].items() for method in ops]
    identity = Identity.generate()
    statuses: dict[int, int] = {}
    failures = []
    for _ in range(500):
        path, method = rng.choice(routes)
        if rng.random() < 0.1:
            method = rng.choice(["put", "delete", "patch"])
        url = re.sub(r"\{[^}]+\}", lambda _m: rng.choice(JUNK_STRINGS + [os_hex(rng, 32)]), path)
        if rng.random() < 0.3:
            url += "?" + "&".join(f"{k}={rng.choice(JUNK_STRINGS + [str(n) for n in JUNK_NUMBERS])}"
                                  for k in rng.sample(["limit", "offset", "node", "status", "verdict", "rate",
                                                       "bucket_s", "epoch", "result"], 2))
        body_obj = mutate(rng, rng.choice(valid_bodies)) if rng.random() < 0.6 else junk_value(rng)
        raw = json.dumps(body_obj).encode() if rng.random() < 0.9 else bytes(rng.randrange(256) for _ in range(40))
        headers = {"content-type": "application/json"}
        roll = rng.random()
        if roll < 0.5:
            headers.update(sign_request(identity, method.upper(), url.split("#")[0], raw))
        elif roll < 0.7:
            headers.update({"X-Corolla-Key": rng.choice(["zz", "ab" * 32, "-1", "x" * 300, "00"]),
                            "X-Corolla-Timestamp": rng.choice(["1" * 30, "-5", "abc", "1"]),
                            "X-Corolla-Nonce": "00" * 16, "X-Corolla-Signature": "zz"})
        try:
            response = c.http.request(method.upper(), url, content=raw if method != "get" else None, headers=headers)
        except Exception as exc:  # invalid URLs refused by the client itself are not the server's fault
            if "Invalid" in type(exc).__name__ or "URL" in str(exc):
                continue
            raise
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
        if response.status_code >= 500:
            failures.append((method, url[:120], raw[:200], response.status_code, response.text[:200]))
    assert not failures, failures[:5]
    # GETs of public data with ignorable junk may rightly succeed; everything else is refused
    assert sum(n for s, n in statuses.items() if 400 <= s < 500) >= 250, statuses
    assert set(statuses) <= {200, 400, 401, 403, 404, 405, 409, 413, 422}, sorted(statuses.items())
    assert c.get("/v1/check").json()["ok"]
