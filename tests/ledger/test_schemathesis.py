"""Schemathesis against the real service: about 500 requests generated from /openapi.json (valid
and invalid by the schema), half of them properly signed so they reach the handlers, get
no 5xx answer, and the books stay consistent (the `corolla ledger check` invariants)."""

from __future__ import annotations

import json
import random
from collections import Counter
from typing import Any

import httpx
import pytest

from protocol.identity import Identity
from protocol.request_auth import sign_request
from tests.ledger.harness import LedgerProcess

schemathesis = pytest.importorskip("schemathesis")
hypothesis = pytest.importorskip("hypothesis")

TOTAL_REQUESTS = 750  # hypothesis stops early on operations with few inputs: ~500 are sent


def _send(http: httpx.Client, identity: Identity, case: Any, sign: bool) -> httpx.Response:
    body = getattr(case, "body", None)
    raw = b"" if body is None or type(body).__name__ == "NotSet" else json.dumps(body).encode()
    query = {k: v for k, v in (case.query or {}).items() if v is not None}
    request = http.build_request(case.method.upper(), case.formatted_path, params=query or None, content=raw,
                                 headers={"content-type": "application/json"} if raw else {})
    if sign:
        target = request.url.raw_path.decode("ascii")
        request.headers.update(sign_request(identity, case.method.upper(), target, raw))
    return http.send(request)


def test_schemathesis_requests_never_get_5xx_and_books_stay_consistent(ledger: LedgerProcess) -> None:
    from hypothesis import HealthCheck, Phase, given, settings

    http = httpx.Client(base_url=ledger.url, timeout=30)
    schema = schemathesis.openapi.from_dict(http.get("/openapi.json").json())
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) > 20
    per_operation = max(3, TOTAL_REQUESTS // len(operations))
    rng = random.Random(20261202)
    identity = Identity.generate()
    failures: list[str] = []
    statuses: Counter[int] = Counter()

    for operation in operations:
        @given(case=operation.as_strategy())
        @settings(max_examples=per_operation, deadline=None, database=None, derandomize=True,
                  phases=[Phase.generate], suppress_health_check=list(HealthCheck))
        def exercise(case: Any) -> None:
            response = _send(http, identity, case, sign=rng.random() < 0.5)
            statuses[response.status_code] += 1
            if response.status_code >= 500:
                failures.append(f"{case.method.upper()} {case.formatted_path} {case.query} -> "
                                f"{response.status_code} {response.text[:200]}")

        exercise()

    assert failures == [], "\n".join(failures[:10])
    print(f"schemathesis: {sum(statuses.values())} requests, statuses {dict(sorted(statuses.items()))}")
    assert sum(statuses.values()) >= 400
    assert statuses[200] > 0 and statuses[422] > 0  # both accepted and refused bodies reached the handlers
    check = http.get("/v1/check").json()
    assert check["ok"], check
    http.close()
