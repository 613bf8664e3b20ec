"""Journal invariants hold after randomized sequences of ledger operations (hypothesis).

Drives the ledger's own functions (grants, tickets, receipt ingestion, verdicts, epoch
closes at chosen clock times) on a real SQLite file, then proves the books with
`check_invariants` — the same check `corolla ledger check` runs.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger.app import build_context
from ledger.config import Settings
from ledger.db import session_scope
from ledger.epochs import close_epoch
from ledger.journal import check_invariants, transfer
from ledger.receipts_ingest import ingest, store_manifest
from ledger.tickets import TicketError, issue_ticket
from ledger.verdicts import record_verdict
from protocol.identity import Identity
from protocol.verdicts import Reason, Result, Verdict
from tests.ledger.harness import make_receipt, small_manifest

op = st.one_of(
    st.tuples(st.just("grant"), st.integers(0, 2), st.integers(1, 500)),
    st.tuples(st.just("ticket"), st.integers(0, 2), st.integers(1, 400), st.sampled_from([1, 60])),
    st.tuples(st.just("work"), st.integers(0, 2), st.integers(0, 2), st.integers(1, 6), st.integers(0, 120),
              st.booleans()),
    st.tuples(st.just("verdict"), st.integers(0, 50), st.sampled_from([Result.PASS, Result.FAIL,
                                                                       Result.UNREACHABLE])),
    st.tuples(st.just("epoch"), st.integers(0, 3000)),
)


@pytest.fixture(scope="module")
def ctx(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    tmp: Path = tmp_path_factory.mktemp("invariants")
    verifier = Identity.generate()
    context = build_context(Settings(db_url=f"sqlite:///{tmp / 'ledger.db'}", key_file=str(tmp / "k"),
                                     grace_period_s=1, slash_multiple=3, verifier_keys=[verifier.public_hex]))
    context.test_verifier = verifier  # type: ignore[attr-defined]
    manifest = small_manifest(flops=3_000_000)
    store_manifest(context, manifest.to_json())
    context.test_manifest = manifest  # type: ignore[attr-defined]
    yield context
    context.engine.dispose()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(op, min_size=1, max_size=25))
def test_journal_invariants_hold_after_random_operations(ctx, ops) -> None:  # type: ignore[no-untyped-def]
    clients = [Identity.generate() for _ in range(3)]
    nodes = [Identity.generate() for _ in range(3)]
    tickets: list[bytes] = []
    receipts: list[bytes] = []
    clock = int(time.time() * 1000)
    for step in ops:
        kind = step[0]
        if kind == "grant":
            with session_scope(ctx.engine) as session:
                transfer(session, "mint", clients[step[1]].public_hex, step[2], "grant", "test")
        elif kind == "ticket":
            try:
                tickets.append(issue_ticket(ctx, clients[step[1]].public_key, step[2], step[3], None).id)
            except TicketError:
                pass
        elif kind == "work":
            _, n, c, tokens, price, use_ticket = step
            client = clients[c]
            ticket = tickets[-1] if use_ticket and tickets else bytes(32)
            r = make_receipt(nodes[n], client, ctx.test_manifest, tokens=tokens, ticket_id=ticket,
                             price=price if ticket != bytes(32) else 0)
            body = ingest(ctx, [r.to_json(), r.to_json()])
            assert len(body.accepted) + len(body.rejected) == 1 and len(body.duplicates) == 1
            if body.accepted:
                receipts.append(r.id)
        elif kind == "verdict" and receipts:
            v = ctx.test_verifier
            verdict = Verdict(receipt_id=receipts[step[1] % len(receipts)], verifier_key=v.public_key, block=0,
                              result=step[2], reason=Reason.OUTPUT_MISMATCH if step[2] == Result.FAIL else Reason.NONE,
                              openings_hash=os.urandom(32), tolerance=0.1, measured=0.0, timestamp_ms=clock)
            record_verdict(ctx, v.public_key, verdict.sign(v).to_json())
        elif kind == "epoch":
            clock += step[1]
            close_epoch(ctx, now=max(clock, int(time.time() * 1000)))
        with session_scope(ctx.engine) as session:
            report = check_invariants(session)
        assert report.ok, (step, report.problems)
