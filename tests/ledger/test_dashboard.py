"""The audit dashboard renders in a real headless Chromium and shows the API's numbers."""

from __future__ import annotations

import os
import shutil
import time

import pytest

from protocol.identity import Identity
from protocol.verdicts import Reason, Result, Verdict
from tests.ledger.harness import make_receipt

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run"]

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def browser():  # type: ignore[no-untyped-def]
    if not os.path.exists(CHROMIUM) and not shutil.which("chromium"):
        pytest.skip("system Chromium is absent (scripts/setup --system installs it)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield b
        b.close()


def _verdict(v: Identity, rid: bytes, result: Result, reason: Reason = Reason.NONE):  # type: ignore[no-untyped-def]
    return Verdict(receipt_id=rid, verifier_key=v.public_key, block=0, result=result, reason=reason,
                   openings_hash=os.urandom(32), tolerance=1e-4, measured=0.0, timestamp_ms=int(time.time() * 1000)
                   ).sign(v).to_json()


def test_dashboard_renders_and_its_numbers_match_the_api(fresh_ledger, manifest, browser) -> None:  # type: ignore[no-untyped-def]
    ledger = fresh_ledger("sqlite", ["--grace-s", "0"])
    honest, cheat, client = Identity.generate(), Identity.generate(), Identity.generate()
    api, v = ledger.client(), ledger.client(ledger.verifier)
    api.post("/v1/manifests", manifest.to_json())
    for node, count in ((honest, 6), (cheat, 4)):
        rs = [make_receipt(node, client, manifest, step=i, tokens=3 + i) for i in range(count)]
        ledger.client(node).post("/v1/receipts", {"receipts": [r.to_json() for r in rs]})
        verdicts = [_verdict(ledger.verifier, rs[0].id, Result.PASS)]
        if node is cheat:
            verdicts.append(_verdict(ledger.verifier, rs[1].id, Result.FAIL, Reason.REPLAY))
        for body in verdicts:
            assert v.post("/v1/verdicts", body).status_code == 200
    ledger.close_epoch()

    page = browser.new_page()
    page.goto(f"{ledger.url}/dashboard")
    page.wait_for_selector("body[data-loaded]", timeout=20_000)
    assert page.inner_text("#books") == "books consistent"

    nodes = api.get("/v1/nodes").json()
    assert len(nodes) == 2
    for node in nodes:
        row = page.locator(f'#nodes tr[data-key="{node["key"]}"]')
        for field in ("receipts", "tokens", "claimed", "paid", "passes", "fails", "balance", "stake"):
            assert row.locator(f'td[data-field="{field}"]').inner_text() == str(node[field]), field
    check = api.get("/v1/check").json()
    assert page.inner_text("#total-minted") == str(check["minted"])
    assert page.inner_text("#total-slashed") == str(check["slashed"]) != "0"

    stats = api.get("/v1/verifiers").json()[0]
    vrow = page.locator(f'#verifiers tr[data-key="{stats["key"]}"]')
    assert vrow.locator('td[data-field="checks"]').inner_text() == str(stats["checks"]) == "3"
    assert vrow.locator('td[data-field="by_reason"]').inner_text() == "replay: 1"

    epoch = api.get("/v1/epochs/latest").json()
    erow = page.locator(f'#epochs tr[data-number="{epoch["number"]}"]')
    assert erow.locator('td[data-field="work_minted"]').inner_text() == str(epoch["work_minted"])
    assert erow.locator('td[data-field="slashed"]').inner_text() == str(epoch["slashed"])

    bars = page.locator("#plot rect.work-bar")
    timeline = api.get("/v1/timeline", bucket_s=60).json()
    assert bars.count() == len(timeline)
    assert sum(int(bars.nth(i).get_attribute("data-work")) for i in range(bars.count())) == \
        sum(p["verified_work"] for p in timeline)
    assert page.locator("#plot circle.fail-dot").count() == sum(1 for p in timeline if p["failures"])

    # filters: failed receipts only
    page.select_option('#receipt-filters select[name="status"]', "failed")
    page.click('#receipt-filters button[type="submit"]')
    page.wait_for_function("document.querySelectorAll('#receipts tbody tr').length === 1")
    failed = api.get("/v1/receipts", status="failed").json()
    assert page.locator("#receipts tbody tr").first.get_attribute("data-id") == failed[0]["id"]
    page.select_option('#verdict-filters select[name="result"]', "2")
    page.click('#verdict-filters button[type="submit"]')
    page.wait_for_function("document.querySelectorAll('#verdicts tbody tr').length === 1")
    assert page.locator('#verdicts td[data-field="reason"]').inner_text() == "replay"
    # clicking a node shows its receipts (its pass/fail history)
    page.click(f'#nodes tr[data-key="{cheat.public_hex}"] td.link')
    page.wait_for_function("document.querySelectorAll('#receipts tbody tr').length === 4")
    verdicts_shown = sorted(page.locator('#receipts td[data-field="verdict"]').all_inner_texts())
    assert verdicts_shown == ["fail", "none", "none", "pass"]
    page.close()
