"""End to end: a node operator registers its node key through the ledger's attestation.

NodeRegistry registers a key only with an EIP-712 `Binding(nodeKey, operator)` signed by
its attester, the ledger's chain key, which signs only bindings that both the node's Ed25519
key and the operator's EVM key signed. Real anvil, real `corolla ledger serve`, and the
operator's `corolla chain register`.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
from eth_account import Account
from eth_account.messages import encode_defunct

from ledger.chain import Chain, ChainError, NodeRegistry, connect, deploy
from ledger.chain_cli import main as chain_main
from ledger.registration import Attestation
from protocol.binding import Binding, binding_message, make_binding, verify_binding
from protocol.eip712 import BindingAttestation, binding_digest, recover_binding_signer, sign_binding
from protocol.identity import Identity
from tests.chain.anvil import DEV_KEYS, ROOT, Anvil
from tests.ledger.harness import LedgerProcess

DEPLOYER, POSTER, OPERATOR, SQUATTER = (Account.from_key(k) for k in DEV_KEYS[:4])
ZERO = "0x0000000000000000000000000000000000000000"


def _key_file(tmp_path: Path, name: str, key: str) -> str:
    path = tmp_path / f"{name}.key"
    path.write_text(key + "\n")
    path.chmod(0o600)
    return str(path)


def _register_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cli.main", "chain", "register", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def _refused(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    """Run `corolla chain register ARGS` in-process; it must fail with exactly one line on stderr."""
    capsys.readouterr()
    assert chain_main(["register", *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


@pytest.fixture
def world(anvil: Anvil, tmp_path: Path):  # type: ignore[no-untyped-def]
    """Contracts whose poster (hence attester) is the ledger's chain key, and that ledger."""
    d = deploy(Chain(connect(anvil.url), DEPLOYER), poster=POSTER.address)
    d.save(tmp_path / "deployment.json")
    ledger = LedgerProcess(f"sqlite:///{tmp_path / 'ledger.db'}", tmp_path / "ledger", args=[
        "--chain-rpc", anvil.url, "--chain-key", _key_file(tmp_path, "poster", DEV_KEYS[1]),
        "--chain-addresses", str(tmp_path / "deployment.json")]).start()
    node = Identity.generate()
    node_file = tmp_path / "node.key"
    node.save(node_file)
    try:
        yield SimpleNamespace(
            anvil=anvil, deployment=d, deployment_file=str(tmp_path / "deployment.json"), ledger=ledger,
            node=node, node_file=str(node_file), tmp_path=tmp_path,
            operator_key=_key_file(tmp_path, "operator", DEV_KEYS[2]),
            squatter_key=_key_file(tmp_path, "squatter", DEV_KEYS[3]),
            registry=NodeRegistry(Chain(connect(anvil.url), DEPLOYER), d),
        )
    finally:
        ledger.stop()


def test_operator_registers_its_node_key_with_the_ledgers_attestation(world, capsys) -> None:  # type: ignore[no-untyped-def]
    w = world
    assert w.registry.attester() == POSTER.address  # deploy's default: the poster, i.e. the ledger's chain key
    r = _register_cli("--ledger", w.ledger.url, "--rpc", w.anvil.url, "--key", w.operator_key,
                      "--node-key", w.node_file)
    assert r.returncode == 0, r.stderr
    assert f"registered node {w.node.public_hex} to {OPERATOR.address}" in r.stdout
    assert w.registry.node(w.node.public_key).operator == OPERATOR.address

    # Running it again says so in one line instead of sending a doomed transaction.
    assert "already registered to this address" in _refused(
        capsys, "--ledger", w.ledger.url, "--rpc", w.anvil.url, "--key", w.operator_key, "--node-key", w.node_file)


def test_attestation_is_the_eip712_binding_signed_by_the_ledgers_chain_key(world) -> None:  # type: ignore[no-untyped-def]
    w = world
    binding = make_binding(w.node, DEV_KEYS[2])
    r = httpx.post(f"{w.ledger.url}/v1/bindings/attest", json=binding.to_json())
    assert r.status_code == 200, r.text
    att = Attestation.from_json(r.json())
    assert (att.node_key, att.operator, att.chain_id, att.registry, att.attester) == (
        w.node.public_hex, OPERATOR.address, w.deployment.chain_id, w.deployment.registry, POSTER.address)
    terms = BindingAttestation(w.deployment.chain_id, w.deployment.registry, w.node.public_key, OPERATOR.address)
    assert recover_binding_signer(terms, att.signature_bytes()) == POSTER.address
    # The contract computes the digest the ledger signed.
    on_chain = w.registry.c.functions.bindingDigest(w.node.public_key, OPERATOR.address).call()
    assert bytes(on_chain) == binding_digest(terms)


def test_squatter_gets_no_attestation_and_a_forged_one_reverts(world) -> None:  # type: ignore[no-untyped-def]
    w = world
    victim = w.node.public_key
    # A binding of the victim's key to the squatter's address: the squatter's EVM signature is
    # genuine, but lacking the victim's Ed25519 key it can only sign with another one.
    message = binding_message(victim, SQUATTER.address)
    evm_signature = bytes(Account.sign_message(encode_defunct(message), SQUATTER.key).signature)
    forged = Binding(victim, SQUATTER.address, Identity.generate().sign(message), evm_signature)
    assert not verify_binding(forged)
    r = httpx.post(f"{w.ledger.url}/v1/bindings/attest", json=forged.to_json())
    assert r.status_code == 422 and "do not verify" in r.json()["detail"]
    # A malformed body is a 422 too.
    assert httpx.post(f"{w.ledger.url}/v1/bindings/attest", json={"ed25519_key": "00"}).status_code == 422

    squatter = NodeRegistry(Chain(connect(w.anvil.url), SQUATTER), w.deployment)
    terms = BindingAttestation(w.deployment.chain_id, w.deployment.registry, victim, SQUATTER.address)
    # Self-signed attestation: not the attester.
    with pytest.raises(ChainError, match=r"InvalidAttestation\(" + w.node.public_hex):
        squatter.register(victim, sign_binding(SQUATTER.key, terms))
    # The operator's genuine attestation, copied: it names the operator, not the squatter.
    genuine = httpx.post(f"{w.ledger.url}/v1/bindings/attest", json=make_binding(w.node, DEV_KEYS[2]).to_json())
    with pytest.raises(ChainError, match="InvalidAttestation"):
        squatter.register(victim, Attestation.from_json(genuine.json()).signature_bytes())
    assert w.registry.node(victim).operator == ZERO


def test_ledger_without_chain_key_or_another_key_is_refused_in_one_line(world, capsys) -> None:  # type: ignore[no-untyped-def]
    w = world
    binding = make_binding(w.node, DEV_KEYS[2])
    bare = LedgerProcess(f"sqlite:///{w.tmp_path / 'bare.db'}", w.tmp_path / "bare").start()
    # A ledger whose chain key is not the registry's attester (no --chain-rpc: pass --deployment).
    other = LedgerProcess(f"sqlite:///{w.tmp_path / 'other.db'}", w.tmp_path / "other", args=[
        "--chain-key", w.squatter_key, "--chain-addresses", w.deployment_file]).start()
    try:
        r = httpx.post(f"{bare.url}/v1/bindings/attest", json=binding.to_json())
        assert r.status_code == 404 and "no chain key" in r.json()["detail"]
        err = _refused(capsys, "--ledger", bare.url, "--rpc", w.anvil.url, "--key", w.operator_key,
                       "--node-key", w.node_file, "--deployment", w.deployment_file)
        assert "refused to attest" in err and "404" in err
        err = _refused(capsys, "--ledger", other.url, "--rpc", w.anvil.url, "--key", w.operator_key,
                       "--node-key", w.node_file, "--deployment", w.deployment_file)
        assert f"signed by {SQUATTER.address}, but NodeRegistry's attester is {POSTER.address}" in err
    finally:
        bare.stop()
        other.stop()
    assert w.registry.node(w.node.public_key).operator == ZERO
