"""End to end: a real ledger with a chain configured anchors its epochs on a real anvil,
an operator claims with `corolla claim`, and a ledger restarted mid-anchoring neither skips
nor repeats an epoch."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace

import pytest
from eth_account import Account
from sqlmodel import Session

from client.claim_cli import claim
from ledger.anchoring import anchor_pending_epochs, settlement_from_settings
from ledger.chain import Chain, ChainError, Deployment, Settlement, Token, connect, deploy
from ledger.db import make_engine
from ledger.models import Epoch, EpochBalance
from protocol.binding import make_binding
from protocol.identity import Identity
from tests.chain.anvil import DEV_KEYS, ROOT, Anvil, free_port
from tests.ledger.harness import LedgerProcess, make_receipt, small_manifest

DEPLOYER = Account.from_key(DEV_KEYS[0])


@pytest.fixture
def chain_env(anvil: Anvil, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[SimpleNamespace]:
    """Fresh contracts whose poster is the ledger's own chain key (a dev account)."""
    chain = Chain(connect(anvil.url), DEPLOYER)
    poster = Account.from_key(DEV_KEYS[5])
    d = deploy(chain, poster=poster.address)
    (tmp_path / "deployment.json").write_text(json.dumps(d.__dict__))
    (tmp_path / "ledger-chain.key").write_text(DEV_KEYS[5] + "\n")
    env = SimpleNamespace(
        anvil=anvil, deployment=d, chain=chain,
        chain_rpc=anvil.url, chain_key_file=str(tmp_path / "ledger-chain.key"),
        chain_addresses_file=str(tmp_path / "deployment.json"),
    )
    # The ledger reads its chain settings from flags or, equally, the environment.
    monkeypatch.setenv("COROLLA_LEDGER_CHAIN_RPC", env.chain_rpc)
    monkeypatch.setenv("COROLLA_LEDGER_CHAIN_KEY_FILE", env.chain_key_file)
    monkeypatch.setenv("COROLLA_LEDGER_CHAIN_ADDRESSES_FILE", env.chain_addresses_file)
    yield env


def _ledger(tmp_path: Path, name: str, chain: SimpleNamespace | None, db: str | None = None) -> LedgerProcess:
    args = ["--grace-s", "0"]
    if chain is not None:
        args += ["--chain-rpc", chain.chain_rpc, "--chain-key", chain.chain_key_file,
                 "--chain-addresses", chain.chain_addresses_file]
    return LedgerProcess(db or f"sqlite:///{tmp_path / 'ledger.db'}", tmp_path / name, args=args)


def _work(ledger: LedgerProcess, node: Identity, manifest, receipts: int) -> None:  # type: ignore[no-untyped-def]
    client = Identity.generate()
    batch = [make_receipt(node, client, manifest, step=s, tokens=8).to_json() for s in range(receipts)]
    r = ledger.client(node).post("/v1/receipts", {"receipts": batch})
    assert r.status_code == 200, r.text


def _claim(ledger: LedgerProcess, chain: SimpleNamespace, key_file: Path) -> dict:
    r = subprocess.run(
        [sys.executable, "-m", "cli.main", "claim", "--ledger", ledger.url, "--rpc", chain.chain_rpc,
         "--key", str(key_file), "--deployment", chain.chain_addresses_file, "--json"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert r.returncode == 0, r.stderr
    return dict(json.loads(r.stdout.strip().splitlines()[-1]))


def _posts(chain: SimpleNamespace) -> list[tuple[int, str]]:
    """(epoch, tx hash) of every RootPosted log, in chain order."""
    s = Settlement(chain.chain, chain.deployment)
    logs = s.c.events.RootPosted().get_logs(from_block=chain.deployment.block)
    return [(int(log["args"]["epoch"]), "0x" + bytes(log["transactionHash"]).hex()) for log in logs]


def test_operator_claims_what_the_ledger_settled(chain_env: SimpleNamespace, tmp_path: Path) -> None:
    manifest = small_manifest()
    operator = Account.from_key(DEV_KEYS[1])
    key_file = tmp_path / "operator.key"
    key_file.write_text(DEV_KEYS[1] + "\n")
    ledger = _ledger(tmp_path, "l", chain_env).start()
    try:
        node = Identity.generate()
        ledger.client().post("/v1/manifests", manifest.to_json())
        assert ledger.client(node).post("/v1/accounts/bind", make_binding(node, operator.key).to_json()).status_code == 200
        _work(ledger, node, manifest, 3)
        ledger.close_epoch()  # pays the work off-chain; nothing is claimable before a withdrawal
        account = ledger.client().get(f"/v1/accounts/{node.public_hex}").json()
        assert account["cumulative"] == 0 and account["balance"] > 1
        earned = account["balance"]
        withdrawal = ledger.client(node).post("/v1/withdrawals", {"amount": earned - 1})
        assert withdrawal.status_code == 200 and withdrawal.json()["balance"] == 1
        # withdrawn credits left the off-chain books: they cannot be spent or withdrawn again
        assert ledger.client(node).post("/v1/withdrawals", {"amount": 2}).status_code == 409
        assert ledger.client(node).post("/v1/tickets", {"cap": 2, "ttl_s": 60}).status_code == 409
        first = ledger.close_epoch()
        epoch = ledger.client().get(f"/v1/epochs/{first['number']}").json()
        assert epoch["anchor_tx"] and epoch["anchor_block"], "the ledger did not anchor the epoch"
        assert _posts(chain_env)[-1] == (first["number"], epoch["anchor_tx"])

        cumulative = ledger.client().get(f"/v1/accounts/{node.public_hex}").json()["cumulative"]
        assert cumulative == earned - 1
        result = _claim(ledger, chain_env, key_file)
        token = Token(chain_env.chain, chain_env.deployment)
        assert result["paid"] == cumulative and token.balance_of(operator.address) == cumulative
        assert result["gas_used"] < 120_000

        # the ledger publishes its deployment, so a claim needs no addresses file
        assert ledger.client().get("/v1/chain").json()["settlement"] == chain_env.deployment.settlement
        again = asdict(claim(ledger.url, chain_env.chain_rpc, str(key_file)))
        assert again["paid"] == 0 and again["tx_hash"] is None
        assert token.balance_of(operator.address) == cumulative

        _work(ledger, node, manifest, 2)
        ledger.close_epoch()
        balance = ledger.client().get(f"/v1/accounts/{node.public_hex}").json()["balance"]
        assert ledger.client(node).post("/v1/withdrawals", {"amount": balance}).status_code == 200
        second = ledger.close_epoch()
        cumulative = ledger.client().get(f"/v1/accounts/{node.public_hex}").json()["cumulative"]
        later = asdict(claim(ledger.url, chain_env.chain_rpc, str(key_file), settlement=chain_env.deployment.settlement))
        assert later["epoch"] == second["number"]
        assert token.balance_of(operator.address) == cumulative == later["cumulative"]
    finally:
        ledger.stop()


def _close_epochs_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, node: Identity, manifest,  # type: ignore[no-untyped-def]
                          epochs: int, receipts: int) -> dict[int, str]:
    """Close `epochs` epochs of `receipts` receipts each on a ledger with no chain configured
    (the node bound to a fresh EVM address); {epoch number: root}."""
    for var in ("COROLLA_LEDGER_CHAIN_RPC", "COROLLA_LEDGER_CHAIN_KEY_FILE", "COROLLA_LEDGER_CHAIN_ADDRESSES_FILE"):
        monkeypatch.delenv(var)
    offline = _ledger(tmp_path, "offline", None).start()
    try:
        offline.client().post("/v1/manifests", manifest.to_json())
        offline.client(node).post("/v1/accounts/bind", make_binding(node, Account.create().key).to_json())
        roots = {}
        for _ in range(epochs):
            _work(offline, node, manifest, receipts)
            e = offline.close_epoch()
            roots[e["number"]] = e["root"]
    finally:
        offline.kill()
    return roots


def test_restart_mid_anchoring_neither_skips_nor_repeats(chain_env: SimpleNamespace, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    manifest = small_manifest()
    node = Identity.generate()
    # 1. Three epochs close while the chain is unreachable (no chain configured).
    roots = _close_epochs_offline(tmp_path, monkeypatch, node, manifest, epochs=3, receipts=1)
    numbers = sorted(roots)

    # 2. The first epoch's root reached the chain, but the process died before recording it.
    engine = make_engine(f"sqlite:///{tmp_path / 'ledger.db'}")
    settings = SimpleNamespace(chain_rpc=chain_env.chain_rpc, chain_key_file=chain_env.chain_key_file,
                               chain_addresses_file=chain_env.chain_addresses_file)
    settlement = settlement_from_settings(settings)
    with Session(engine) as session:
        total = sum(b.cumulative for b in session.query(EpochBalance).filter_by(epoch=numbers[0]))
    crashed_tx = settlement.post_root(numbers[0], bytes.fromhex(roots[numbers[0]][2:]), total)

    # 3. While the chain is unreachable, anchoring fails and records nothing.
    dead = SimpleNamespace(chain_rpc=f"http://127.0.0.1:{free_port()}", chain_key_file=settings.chain_key_file,
                           chain_addresses_file=settings.chain_addresses_file)
    with Session(engine) as session, pytest.raises(ChainError):
        anchor_pending_epochs(session, dead)
    with Session(engine) as session:
        assert all(e.anchor_tx is None for e in session.query(Epoch))

    # 4. After the restart, anchoring records the crashed transaction and posts the rest, in order.
    with Session(engine) as session:
        done = anchor_pending_epochs(session, settings)
    assert [(a.epoch, a.sent) for a in done] == [(numbers[0], False), (numbers[1], True), (numbers[2], True)]
    assert done[0].tx_hash == crashed_tx.tx_hash
    with Session(engine) as session:
        assert anchor_pending_epochs(session, settings) == []  # idempotent
        recorded = {e.number: e.anchor_tx for e in session.query(Epoch)}
    posts = _posts(chain_env)
    assert [n for n, _ in posts] == numbers  # each epoch exactly once, in order
    assert dict(posts) == recorded

    # 5. The restarted ledger (chain configured) anchors its next epoch after them.
    monkeypatch.setenv("COROLLA_LEDGER_CHAIN_RPC", chain_env.chain_rpc)
    monkeypatch.setenv("COROLLA_LEDGER_CHAIN_KEY_FILE", chain_env.chain_key_file)
    monkeypatch.setenv("COROLLA_LEDGER_CHAIN_ADDRESSES_FILE", chain_env.chain_addresses_file)
    online = _ledger(tmp_path, "online", chain_env).start()
    try:
        _work(online, node, manifest, 1)
        fourth = online.close_epoch()
        epoch = online.client().get(f"/v1/epochs/{fourth['number']}").json()
    finally:
        online.stop()
    posts = _posts(chain_env)
    assert [n for n, _ in posts] == [*numbers, fourth["number"]]
    assert posts[-1][1] == epoch["anchor_tx"]
    assert settlement.latest_epoch() == fourth["number"]
    assert Deployment.load(chain_env.chain_addresses_file).settlement == chain_env.deployment.settlement


def test_claim_cli_reports_user_mistakes_in_one_line(chain_env: SimpleNamespace, tmp_path: Path) -> None:
    key_file = tmp_path / "k"
    key_file.write_text(DEV_KEYS[2] + "\n")
    base = [sys.executable, "-m", "cli.main", "claim", "--rpc", chain_env.chain_rpc, "--key", str(key_file),
            "--deployment", chain_env.chain_addresses_file]
    for extra in (["--ledger", f"http://127.0.0.1:{free_port()}"],
                  ["--ledger", "http://127.0.0.1:9", "--account", "0x1234"]):
        r = subprocess.run(base + extra, cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert r.returncode == 2, r.stderr
        assert r.stderr.startswith("corolla claim: ") and r.stderr.strip().count("\n") == 0


def test_two_ledger_processes_racing_to_anchor_record_one_post(chain_env: SimpleNamespace, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Two anchoring passes at once (two ledger processes on one database) post each root once
    and both end with the same recorded transaction: the loser records the winner's post."""
    import threading

    (number,) = _close_epochs_offline(tmp_path, monkeypatch, Identity.generate(),
                                      small_manifest(), epochs=1, receipts=2)
    engine = make_engine(f"sqlite:///{tmp_path / 'ledger.db'}")
    settings = SimpleNamespace(chain_rpc=chain_env.chain_rpc, chain_key_file=chain_env.chain_key_file,
                               chain_addresses_file=chain_env.chain_addresses_file)
    start = threading.Barrier(2)
    results: list[object] = []

    def racer() -> None:
        settlement = settlement_from_settings(settings)
        start.wait(timeout=30)
        with Session(engine) as session:
            try:
                results.append(anchor_pending_epochs(session, settings, settlement))
            except Exception as exc:  # noqa: BLE001 - the assertion below reports it
                results.append(exc)

    threads = [threading.Thread(target=racer) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert len(results) == 2 and all(isinstance(r, list) for r in results), results
    posts = _posts(chain_env)
    assert [n for n, _ in posts] == [number]  # posted once
    anchored = [a for r in results for a in r]  # type: ignore[attr-defined]
    assert anchored and {a.tx_hash for a in anchored} == {posts[0][1]}  # recorded the real post
    with Session(engine) as session:
        epoch = session.get(Epoch, number)
        assert epoch is not None and epoch.anchor_tx == posts[0][1]


def test_a_root_whose_post_failed_is_retried_without_another_epoch_close(built_contracts: None,
                                                                         tmp_path: Path) -> None:
    """The chain is down when an epoch closes; once it is back, the ledger's retry job posts
    the root (once) within a few retry periods, with no further epoch close or restart."""
    from tests.chain.anvil import ANVIL, require

    require(ANVIL, "anvil")
    state = tmp_path / "anvil-state.json"
    node = Anvil(["--dump-state", str(state)]).start()  # its own anvil: it goes down and comes back
    try:
        d = deploy(Chain(connect(node.url), DEPLOYER))
        d.save(tmp_path / "deployment.json")
        node.stop()  # dumps the chain's state, contracts included
        node.args = ["--load-state", str(state)]
        (tmp_path / "poster.key").write_text(DEV_KEYS[0] + "\n")
        ledger = LedgerProcess(f"sqlite:///{tmp_path / 'ledger.db'}", tmp_path / "l", args=[
            "--grace-s", "0", "--anchor-retry-s", "1", "--chain-rpc", node.url,
            "--chain-key", str(tmp_path / "poster.key"), "--chain-addresses", str(tmp_path / "deployment.json")])
        ledger.start()
        try:
            manifest, worker = small_manifest(), Identity.generate()
            ledger.client().post("/v1/manifests", manifest.to_json())
            ledger.client(worker).post("/v1/accounts/bind", make_binding(worker, Account.create().key).to_json())
            _work(ledger, worker, manifest, 2)
            closed = ledger.close_epoch()  # its post fails: nothing answers on the RPC port
            assert closed["root"]
            time.sleep(1.5)  # a retry period with the chain still down: still unanchored
            assert ledger.client().get(f"/v1/epochs/{closed['number']}").json()["anchor_tx"] is None

            node.start()  # the chain is back on the same port, with the same contracts
            deadline = time.monotonic() + 30
            while (epoch := ledger.client().get(f"/v1/epochs/{closed['number']}").json())["anchor_tx"] is None:
                assert time.monotonic() < deadline, "the retry job did not anchor the epoch"
                time.sleep(0.2)
            time.sleep(2.5)  # two more retry periods: nothing is posted again
            chain = SimpleNamespace(chain=Chain(connect(node.url), DEPLOYER), deployment=d)
            posts = _posts(chain)
            assert posts == [(closed["number"], epoch["anchor_tx"])]
            assert Settlement(chain.chain, d).root_of(closed["number"]) == bytes.fromhex(closed["root"][2:])
            log = (tmp_path / "l" / "server.log").read_text()
            assert f"anchoring epoch {closed['number']} failed: no EVM JSON-RPC answers" in log
            assert "Traceback" not in log  # an unreachable chain is one warning line per attempt
        finally:
            ledger.stop()
    finally:
        node.stop()
