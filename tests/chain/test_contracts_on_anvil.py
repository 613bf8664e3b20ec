"""The contracts on a real anvil, driven from Python exactly as the ledger and users do."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from eth_account import Account

from ledger.chain import Chain, ChainError, Deployment, NodeRegistry, Settlement, Token, connect, deploy
from protocol.eip712 import BindingAttestation, SlashRequest, sign_binding, sign_slash, slash_digest
from protocol.merkle import BalanceTree
from tests.chain.anvil import DEV_KEYS, ROOT, Anvil

DEPLOYER, OPERATOR, VERIFIER_A, VERIFIER_B, VERIFIER_C, STRANGER = (Account.from_key(k) for k in DEV_KEYS)


@pytest.fixture
def chain(anvil: Anvil) -> Chain:
    return Chain(connect(anvil.url), DEPLOYER)


@pytest.fixture
def deployment(chain: Chain) -> Deployment:
    """Fresh contracts per test (epoch ids only go up); verifiers A, B, C with quorum 2."""
    d = deploy(chain, unbonding_delay_s=3600)
    registry = NodeRegistry(chain, d)
    for v in (VERIFIER_A, VERIFIER_B, VERIFIER_C):
        registry.set_verifier(v.address, True)
    registry.set_quorum(2)
    return d


def as_(account, anvil: Anvil) -> Chain:  # type: ignore[no-untyped-def]
    return Chain(connect(anvil.url), account)


def test_deploy_cli_writes_addresses_the_ledger_reads(anvil: Anvil, tmp_path) -> None:  # type: ignore[no-untyped-def]
    key = tmp_path / "deployer.key"
    key.write_text(DEV_KEYS[0] + "\n")
    out = tmp_path / "deployment.json"
    r = subprocess.run(
        [sys.executable, "-m", "cli.main", "chain", "deploy", "--rpc", anvil.url, "--key", str(key),
         "--out", str(out), "--verifier", VERIFIER_A.address, "--verifier", VERIFIER_B.address, "--quorum", "2"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert r.returncode == 0, r.stderr
    d = Deployment.load(out)
    assert d.chain_id == 31337 and d.deployer == DEPLOYER.address
    chain = Chain(connect(anvil.url), DEPLOYER)
    assert chain.contract("Settlement", d.settlement).functions.token().call() == d.token
    registry = chain.contract("NodeRegistry", d.registry)
    assert registry.functions.quorum().call() == 2
    assert registry.functions.isVerifier(VERIFIER_B.address).call()
    assert registry.functions.attester().call() == DEPLOYER.address  # default: the poster = the deployer
    assert json.loads(out.read_text())["registry"] == d.registry

    r = subprocess.run([sys.executable, "-m", "cli.main", "chain", "status", "--rpc", anvil.url,
                        "--addresses", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "latest epoch 0" in r.stdout and "verifiers 2  quorum 2" in r.stdout


def test_new_key_writes_a_private_file_once(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from ledger.chain import load_evm_key
    from ledger.chain_cli import main

    path = tmp_path / "k"
    assert main(["new-key", "--out", str(path)]) == 0
    assert path.stat().st_mode & 0o777 == 0o600
    address = load_evm_key(path).address
    assert main(["new-key", "--out", str(path)]) == 2
    assert load_evm_key(path).address == address


def test_deploy_cli_rejects_bad_input_with_one_line(anvil: Anvil, tmp_path) -> None:  # type: ignore[no-untyped-def]
    key = tmp_path / "k"
    key.write_text("not a key\n")
    r = subprocess.run([sys.executable, "-m", "cli.main", "chain", "deploy", "--rpc", anvil.url, "--key", str(key)],
                       cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "private key" in r.stderr
    r = subprocess.run([sys.executable, "-m", "cli.main", "chain", "deploy", "--rpc", "http://127.0.0.1:9",
                        "--key", str(key)], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "Traceback" not in r.stderr


def test_claim_pays_cumulative_balance_once_and_then_the_difference(chain: Chain, deployment: Deployment,
                                                                    anvil: Anvil) -> None:
    settlement, token = Settlement(chain, deployment), Token(chain, deployment)
    alice, bob = Account.create().address, Account.create().address
    tree = BalanceTree([(alice, 1_000), (bob, 250), (OPERATOR.address, 7)])
    settlement.post_root(1, tree.root, 1_257)
    assert settlement.latest_epoch() == 1 and settlement.root_of(1) == tree.root

    # Anyone may submit: the stranger pays gas, alice gets the tokens.
    claimer = Settlement(as_(STRANGER, anvil), deployment)
    tx = claimer.claim(alice, 1_000, tree.proof(alice))
    assert token.balance_of(alice) == 1_000 and token.balance_of(STRANGER.address) == 0
    assert tx.gas_used < 120_000

    with pytest.raises(ChainError, match="NothingToClaim"):
        claimer.claim(alice, 1_000, tree.proof(alice))
    assert token.balance_of(alice) == 1_000

    later = BalanceTree([(alice, 1_600), (bob, 250), (OPERATOR.address, 7)])
    settlement.post_root(2, later.root, 1_857)
    with pytest.raises(ChainError, match="InvalidProof"):  # the old proof is for a superseded root
        claimer.claim(alice, 1_000, tree.proof(alice))
    claimer.claim(alice, 1_600, later.proof(alice))
    assert token.balance_of(alice) == 1_600
    assert settlement.claimed(alice) == 1_600 and settlement.total_claimed() == 1_600


def test_post_root_refuses_repeats_and_strangers(chain: Chain, deployment: Deployment, anvil: Anvil) -> None:
    settlement = Settlement(chain, deployment)
    settlement.post_root(3, b"\x01" * 32, 10)
    with pytest.raises(ChainError, match=r"EpochNotIncreasing\(3, 3\)"):
        settlement.post_root(3, b"\x02" * 32, 10)
    with pytest.raises(ChainError, match="NotPoster"):
        Settlement(as_(STRANGER, anvil), deployment).post_root(4, b"\x02" * 32, 10)
    found = settlement.find_post(3)
    assert found is not None and settlement.find_post(4) is None


def test_deploy_sets_the_attester_and_only_its_attestations_register(chain: Chain, anvil: Anvil) -> None:
    d = deploy(chain, attester=VERIFIER_C.address)
    registry = NodeRegistry(as_(OPERATOR, anvil), d)
    assert registry.attester() == VERIFIER_C.address
    node_key = b"\x0f" * 32
    terms = BindingAttestation(d.chain_id, d.registry, node_key, OPERATOR.address)
    with pytest.raises(ChainError, match=r"InvalidAttestation\("):  # the deployer is not the attester here
        registry.register(node_key, sign_binding(DEPLOYER.key, terms))
    registry.register(node_key, sign_binding(VERIFIER_C.key, terms))
    assert registry.node(node_key).operator == OPERATOR.address
    with pytest.raises(ChainError, match="only the owner sets the attester"):
        deploy(chain, owner=STRANGER.address, attester=VERIFIER_C.address)


def _fund_and_stake(chain: Chain, deployment: Deployment, anvil: Anvil, node_key: bytes, amount: int) -> NodeRegistry:
    tree = BalanceTree([(OPERATOR.address, amount), (STRANGER.address, 1)])
    Settlement(chain, deployment).post_root(1, tree.root, amount + 1)
    op = as_(OPERATOR, anvil)
    Settlement(op, deployment).claim(OPERATOR.address, amount, tree.proof(OPERATOR.address))
    registry = NodeRegistry(op, deployment)
    # deploy() made the deployer the attester: it vouches that OPERATOR holds node_key.
    terms = BindingAttestation(deployment.chain_id, deployment.registry, node_key, OPERATOR.address)
    registry.register(node_key, sign_binding(DEPLOYER.key, terms))
    registry.stake(node_key, amount)
    return registry


def test_verifier_quorum_slashes_stake_once(chain: Chain, deployment: Deployment, anvil: Anvil) -> None:
    node_key, receipt_id = b"\x0e" * 32, b"\xfa" * 32
    registry = _fund_and_stake(chain, deployment, anvil, node_key, 5_000)
    assert registry.node(node_key).stake == 5_000
    req = SlashRequest(deployment.chain_id, deployment.registry, node_key, receipt_id, 2_000)
    sigs = [sign_slash(v.key, req) for v in (VERIFIER_C, VERIFIER_A)]  # any order: sorted on submit

    submitter = NodeRegistry(as_(STRANGER, anvil), deployment)
    with pytest.raises(ChainError, match="NotEnoughSignatures"):
        submitter.slash(node_key, receipt_id, 2_000, sigs[:1])
    outsider = sign_slash(STRANGER.key, req)
    with pytest.raises(ChainError, match="NotVerifier"):
        submitter.slash(node_key, receipt_id, 2_000, [sigs[0], outsider])
    with pytest.raises(ChainError):  # signed for 2,000, submitted for 4,000
        submitter.slash(node_key, receipt_id, 4_000, sigs)

    submitter.slash(node_key, receipt_id, 2_000, sigs)
    assert registry.node(node_key).stake == 3_000
    assert Token(chain, deployment).balance_of(deployment.registry) == 3_000
    assert registry.slashed(receipt_id)
    with pytest.raises(ChainError, match="ReceiptAlreadySlashed"):
        submitter.slash(node_key, receipt_id, 2_000, sigs)


def test_unbonding_stake_stays_slashable_until_withdrawn(chain: Chain, deployment: Deployment,
                                                         anvil: Anvil) -> None:
    node_key = b"\x0f" * 32
    registry = _fund_and_stake(chain, deployment, anvil, node_key, 1_000)
    registry.request_withdrawal(node_key, 600)
    with pytest.raises(ChainError, match="StillUnbonding"):
        registry.withdraw(node_key)
    req = SlashRequest(deployment.chain_id, deployment.registry, node_key, b"\x01" * 32, 900)
    NodeRegistry(chain, deployment).slash(node_key, req.receipt_id, 900,
                                          [sign_slash(v.key, req) for v in (VERIFIER_A, VERIFIER_B)])
    assert registry.node(node_key).stake == 0 and registry.node(node_key).unbonding == 100
    anvil.rpc("evm_increaseTime", 3600)
    anvil.rpc("evm_mine")
    registry.withdraw(node_key)
    assert Token(chain, deployment).balance_of(OPERATOR.address) == 100


def test_python_slash_digest_equals_the_contracts(chain: Chain, deployment: Deployment) -> None:
    c = chain.contract("NodeRegistry", deployment.registry)
    for node_key, receipt_id, amount in [(b"\x00" * 32, b"\x00" * 32, 1), (b"\xab" * 32, b"\xcd" * 32, 2**256 - 1)]:
        req = SlashRequest(deployment.chain_id, deployment.registry, node_key, receipt_id, amount)
        assert bytes(c.functions.slashDigest(node_key, receipt_id, amount).call()) == slash_digest(req)


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8, 13, 33])
def test_every_python_balance_tree_proof_verifies_on_chain(n: int, chain: Chain, anvil: Anvil) -> None:
    """protocol.merkle.BalanceTree (sorted leaves, odd node carried up) for trees of many sizes."""
    d = deploy(chain)
    entries = [(Account.create().address, 1 + i * 977) for i in range(n)]
    tree = BalanceTree(entries)
    Settlement(chain, d).post_root(1, tree.root, sum(c for _, c in entries))
    c = chain.contract("Settlement", d.settlement)
    for account, cumulative in entries:
        assert c.functions.claim(account, cumulative, tree.proof(account)).call() == cumulative
        with pytest.raises(Exception, match="InvalidProof|0x09bde339"):
            c.functions.claim(account, cumulative + 1, tree.proof(account)).call()
