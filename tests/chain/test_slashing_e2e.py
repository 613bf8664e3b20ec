"""End to end: a verifier's FAIL verdict on a real ledger becomes an on-chain slash.

Two registered verifiers sign the slash with `corolla chain sign-slash` (reading the
verdict and its receipt from the ledger API), anyone submits with `corolla chain slash`,
and the node's stake on a real anvil drops by the signed amount, once.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from eth_account import Account

from ledger.chain import Chain, NodeRegistry, Settlement, connect, deploy
from ledger.chain_cli import main as chain_main
from protocol.eip712 import BindingAttestation, sign_binding
from protocol.identity import Identity
from protocol.merkle import BalanceTree
from protocol.verdicts import Reason, Result, SignedVerdict, Verdict
from tests.chain.anvil import DEV_KEYS, ROOT, Anvil
from tests.ledger.harness import LedgerProcess, make_receipt, small_manifest

DEPLOYER, OPERATOR, _, VERIFIER_A, VERIFIER_B, STRANGER = (Account.from_key(k) for k in DEV_KEYS)
STAKE = 10_000


def _verdict(verifier: Identity, receipt_id: bytes, result: Result) -> SignedVerdict:
    return Verdict(receipt_id=receipt_id, verifier_key=verifier.public_key, block=1, result=result,
                   reason=Reason.OUTPUT_MISMATCH if result == Result.FAIL else Reason.NONE,
                   openings_hash=os.urandom(32), tolerance=1e-4, measured=0.5 if result == Result.FAIL else 1e-6,
                   timestamp_ms=int(time.time() * 1000)).sign(verifier)


def _key_file(tmp_path: Path, name: str, key: str) -> str:
    path = tmp_path / f"{name}.key"
    path.write_text(key + "\n")
    return str(path)


def _corolla(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cli.main", "chain", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)


def _refused(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    """Run `corolla chain ARGS` in-process; it must fail with exactly one line on stderr."""
    capsys.readouterr()
    assert chain_main(list(args)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


@pytest.fixture
def world(anvil: Anvil, tmp_path: Path):  # type: ignore[no-untyped-def]
    """Contracts (verifiers A and B, quorum 2), a node staked on-chain, and a ledger holding
    one receipt of that node with a FAIL verdict and one with a PASS verdict."""
    chain = Chain(connect(anvil.url), DEPLOYER)
    d = deploy(chain, unbonding_delay_s=3600)
    registry = NodeRegistry(chain, d)
    for v in (VERIFIER_A, VERIFIER_B):
        registry.set_verifier(v.address, True)
    registry.set_quorum(2)
    d.save(tmp_path / "deployment.json")

    # The operator earns tokens (a claim) and stakes them for its node.
    tree = BalanceTree([(OPERATOR.address, STAKE), (STRANGER.address, 1)])
    Settlement(chain, d).post_root(1, tree.root, STAKE + 1)
    op = Chain(connect(anvil.url), OPERATOR)
    Settlement(op, d).claim(OPERATOR.address, STAKE, tree.proof(OPERATOR.address))
    node = Identity.generate()
    terms = BindingAttestation(d.chain_id, d.registry, node.public_key, OPERATOR.address)
    NodeRegistry(op, d).register(node.public_key, sign_binding(DEPLOYER.key, terms))  # the deployer attests
    NodeRegistry(op, d).stake(node.public_key, STAKE)

    # The ledger publishes the deployment (/v1/chain); no epoch is closed, so it posts nothing.
    ledger = LedgerProcess(f"sqlite:///{tmp_path / 'ledger.db'}", tmp_path / "ledger", args=[
        "--grace-s", "3600", "--slash-multiple", "2", "--chain-rpc", anvil.url,
        "--chain-key", _key_file(tmp_path, "poster", DEV_KEYS[0]),
        "--chain-addresses", str(tmp_path / "deployment.json")]).start()
    try:
        manifest = small_manifest()
        n, v = ledger.client(node), ledger.client(ledger.verifier)
        assert n.post("/v1/manifests", manifest.to_json()).status_code == 200
        client = Identity.generate()
        bad, good = (make_receipt(node, client, manifest, step=s, tokens=10) for s in range(2))
        assert len(n.post("/v1/receipts", {"receipts": [bad.to_json(), good.to_json()]}).json()["accepted"]) == 2
        fail, ok = _verdict(ledger.verifier, bad.id, Result.FAIL), _verdict(ledger.verifier, good.id, Result.PASS)
        for verdict in (fail, ok):
            assert v.post("/v1/verdicts", verdict.to_json()).status_code == 200
        value = ledger.client().get(f"/v1/receipts/{bad.id.hex()}").json()["value"]
        assert value > 0
        yield SimpleNamespace(
            anvil=anvil, deployment=d, registry=registry, ledger=ledger, node=node, bad=bad, good=good,
            fail=fail, ok=ok, amount=2 * value, deployment_file=str(tmp_path / "deployment.json"),
            key_a=_key_file(tmp_path, "verifier-a", DEV_KEYS[3]), key_b=_key_file(tmp_path, "verifier-b", DEV_KEYS[4]),
            key_stranger=_key_file(tmp_path, "stranger", DEV_KEYS[5]),
        )
    finally:
        ledger.stop()


def test_verifiers_signatures_slash_a_failed_receipts_node_once(world, capsys) -> None:  # type: ignore[no-untyped-def]
    w = world
    node_hex, rid = w.node.public_hex, w.bad.id.hex()
    assert w.registry.node(w.node.public_key).stake == STAKE

    # Verifier A names the receipt and checks the chain first; verifier B names the verdict.
    a = _corolla("sign-slash", "--ledger", w.ledger.url, "--key", w.key_a, "--receipt", rid,
                 "--rpc", w.anvil.url, "--json")
    assert a.returncode == 0, a.stderr
    signed_a = json.loads(a.stdout.strip().splitlines()[-1])
    assert signed_a["signer"] == VERIFIER_A.address and signed_a["node_key"] == node_hex
    assert signed_a["receipt_id"] == rid and signed_a["verdict_id"] == w.fail.id.hex()
    assert signed_a["amount"] == w.amount  # default: slash_multiple × the receipt's value
    b = _corolla("sign-slash", "--ledger", w.ledger.url, "--key", w.key_b, "--verdict", w.fail.id.hex())
    assert b.returncode == 0, b.stderr
    sig_b = b.stdout.strip()
    assert sig_b.startswith("0x") and len(sig_b) == 2 + 130

    # A PASS verdict, or a receipt without a FAIL verdict, cannot be signed.
    assert "not FAIL" in _refused(capsys, "sign-slash", "--ledger", w.ledger.url, "--key", w.key_a,
                                  "--verdict", w.ok.id.hex())
    assert "no FAIL verdict" in _refused(capsys, "sign-slash", "--ledger", w.ledger.url, "--key", w.key_a,
                                         "--receipt", w.good.id.hex())
    # A key that is not a registered verifier is told so before it signs anything.
    assert "not a registered verifier" in _refused(capsys, "sign-slash", "--ledger", w.ledger.url, "--key",
                                                   w.key_stranger, "--receipt", rid, "--rpc", w.anvil.url)

    base = ["slash", "--rpc", w.anvil.url, "--key", w.key_stranger, "--ledger", w.ledger.url]
    terms = ["--node", node_hex, "--receipt", rid, "--amount", str(w.amount)]
    sigs = ["--signature", signed_a["signature"], "--signature", sig_b]
    # Mistakes are refused in one line before anything is sent.
    assert "quorum of 2" in _refused(capsys, *base, *terms, "--signature", sig_b)
    assert "same verifier" in _refused(capsys, *base, *terms, "--signature", sig_b, "--signature", sig_b)
    other_terms = ["--node", node_hex, "--receipt", rid, "--amount", str(w.amount + 1)]
    assert "other terms" in _refused(capsys, *base, *other_terms, *sigs)
    assert "not registered" in _refused(capsys, *base, "--node", Identity.generate().public_hex, "--receipt", rid,
                                        "--amount", str(w.amount), *sigs)
    assert w.registry.node(w.node.public_key).stake == STAKE

    # Anyone submits the quorum: the stake drops by the signed amount.
    r = _corolla(*base[:-2], "--deployment", w.deployment_file, *terms, *sigs)
    assert r.returncode == 0, r.stderr
    assert f"stake left {STAKE - w.amount}" in r.stdout
    assert w.registry.node(w.node.public_key).stake == STAKE - w.amount
    assert w.registry.slashed(w.bad.id)

    # The same receipt is never slashed twice, and no verifier signs it again.
    assert "already slashed" in _refused(capsys, *base, *terms, *sigs)
    assert "already slashed" in _refused(capsys, "sign-slash", "--ledger", w.ledger.url, "--key", w.key_a,
                                         "--receipt", rid, "--rpc", w.anvil.url)
    assert w.registry.node(w.node.public_key).stake == STAKE - w.amount


def test_sign_slash_reports_unknown_ids_in_one_line(world, capsys) -> None:  # type: ignore[no-untyped-def]
    w = world
    assert "no verdict" in _refused(capsys, "sign-slash", "--ledger", w.ledger.url, "--key", w.key_a,
                                    "--verdict", "ab" * 32)
    assert "64 hex digits" in _refused(capsys, "sign-slash", "--ledger", w.ledger.url, "--key", w.key_a,
                                       "--receipt", "xyz")
    assert "unreachable" in _refused(capsys, "sign-slash", "--ledger", "http://127.0.0.1:9", "--key", w.key_a,
                                     "--receipt", "ab" * 32)
