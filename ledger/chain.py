"""The ledger's view of the EVM chain: compiled artifacts, keys, deployment, typed contracts.

Artifacts come from `forge build` (out/<Contract>.sol/<Contract>.json at the repository
root, or $COROLLA_CONTRACTS_OUT). A deployment is a small JSON file (chain id + addresses)
that `corolla chain deploy` writes and the ledger reads with `--chain-addresses`.
Every transaction waits for its receipt and fails loudly: a revert raises `ChainError`
naming the contract's custom error, e.g. `EpochNotIncreasing(3, 5)`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path
from typing import Any, cast

from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_utils import function_abi_to_4byte_selector, to_checksum_address
from web3 import Web3
from web3.contract import Contract
from web3.contract.contract import ContractFunction
from web3.exceptions import ContractCustomError, ContractLogicError, Web3Exception

from protocol.eip712 import SlashRequest, recover_slash_signer

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "out"
DEFAULT_UNBONDING_S = 7 * 24 * 3600


class ChainError(RuntimeError):
    """A transaction or call failed; the message says which contract error, if any."""


@dataclass(frozen=True)
class Artifact:
    abi: list[dict[str, Any]]
    bytecode: str


@dataclass(frozen=True)
class TxResult:
    tx_hash: str  # 0x-prefixed
    block: int
    gas_used: int


ZERO_ADDRESS = "0x0000000000000000000000000000000000000000"


@dataclass(frozen=True)
class Deployment:
    """Where the contracts live; written by `corolla chain deploy`."""

    chain_id: int
    settlement: str
    token: str
    registry: str
    deployer: str
    block: int
    unbonding_delay_s: int

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(asdict(self), indent=2) + "\n")

    def check_chain_id(self, chain_id: int, rpc: str = "the RPC") -> None:
        """ChainError unless the node we talk to is the chain these contracts are on."""
        if chain_id != self.chain_id:
            raise ChainError(f"{rpc} is chain {chain_id}, but the deployment is on chain {self.chain_id}")

    @classmethod
    def load(cls, path: str | Path) -> Deployment:
        try:
            data = json.loads(Path(path).read_text())
            return cls(**{k: data[k] for k in cls.__dataclass_fields__})
        except FileNotFoundError:
            raise ChainError(f"deployment file {path} not found (write it with `corolla chain deploy`)") from None
        except (KeyError, TypeError, json.JSONDecodeError) as exc:
            raise ChainError(f"deployment file {path} is not a `corolla chain deploy` file: {exc}") from None


@cache
def load_artifact(name: str, out_dir: str | None = None) -> Artifact:
    """ABI and creation bytecode of contract `name` as built by `forge build`."""
    root = Path(out_dir or os.environ.get("COROLLA_CONTRACTS_OUT") or DEFAULT_OUT)
    path = root / f"{name}.sol" / f"{name}.json"
    if not path.exists():
        raise ChainError(f"{path} not found: run `forge build` at the repository root first")
    data = json.loads(path.read_text())
    return Artifact(abi=data["abi"], bytecode=data["bytecode"]["object"])


def load_evm_key(path: str | Path) -> LocalAccount:
    """An EVM account from a key file holding one hex private key (0x optional)."""
    try:
        text = Path(path).read_text().strip()
    except OSError as exc:
        raise ChainError(f"cannot read EVM key file {path}: {exc.strerror}") from None
    try:
        return Account.from_key(text if text.startswith("0x") else "0x" + text)
    except (ValueError, TypeError):
        raise ChainError(f"EVM key file {path} must hold one 32-byte hex private key") from None


def connect(rpc_url: str, timeout_s: float = 10.0) -> Web3:
    """A Web3 on `rpc_url` that has answered once."""
    # No provider-level retries: callers (anchoring, CLIs) decide when to try again.
    w3 = Web3(Web3.HTTPProvider(rpc_url, request_kwargs={"timeout": timeout_s}, exception_retry_configuration=None))
    try:
        _ = w3.eth.chain_id
    except Exception as exc:
        raise ChainError(f"no EVM JSON-RPC answers at {rpc_url}: {exc}") from None
    return w3


def _decode_error(abi: Sequence[Any], data: Any) -> str | None:
    """`Name(arg, ...)` for revert data that matches a custom error in `abi`."""
    if not isinstance(data, str | bytes) or not data:
        return None
    raw = bytes.fromhex(data[2:] if data.startswith("0x") else data) if isinstance(data, str) else data
    for item in abi:
        if item.get("type") == "error" and function_abi_to_4byte_selector(item) == raw[:4]:
            types = [i["type"] for i in item["inputs"]]
            values = Web3().codec.decode(types, raw[4:]) if types else ()
            shown = ", ".join(v.hex() if isinstance(v, bytes) else str(v) for v in values)
            return f"{item['name']}({shown})"
    return None


class Chain:
    """One account sending transactions on one chain, waiting for each receipt."""

    def __init__(self, w3: Web3, account: LocalAccount, receipt_timeout_s: float = 60.0):
        self.w3, self.account, self.receipt_timeout_s = w3, account, receipt_timeout_s
        self.chain_id = w3.eth.chain_id

    @property
    def address(self) -> str:
        return str(self.account.address)

    def send(self, fn: ContractFunction | None = None, *, deploy: Artifact | None = None,
             args: Sequence[Any] = ()) -> tuple[TxResult, str | None]:
        """Sign and send a contract call (or a deployment); (result, deployed address or None)."""
        abi: Sequence[Any] = fn.contract_abi if fn is not None else (deploy.abi if deploy else [])
        sender = to_checksum_address(self.address)
        try:
            tx_fields: Any = {"from": sender, "chainId": self.chain_id,
                              "nonce": self.w3.eth.get_transaction_count(sender, "pending")}
            if fn is not None:
                tx = fn.build_transaction(tx_fields)  # estimates gas: reverts surface here
            else:
                assert deploy is not None
                factory = self.w3.eth.contract(abi=deploy.abi, bytecode=deploy.bytecode)
                tx = factory.constructor(*args).build_transaction(tx_fields)
        except ContractCustomError as exc:
            raise ChainError(f"reverted: {_decode_error(abi, exc.data) or exc.data}") from None
        except ContractLogicError as exc:
            raise ChainError(f"reverted: {exc.message or exc}") from None
        signed = self.account.sign_transaction(cast(Any, tx))
        try:
            tx_hash = self.w3.eth.send_raw_transaction(signed.raw_transaction)
            receipt = self.w3.eth.wait_for_transaction_receipt(tx_hash, timeout=self.receipt_timeout_s)
        except (Web3Exception, ValueError) as exc:  # e.g. nonce taken by a concurrent sender, timeout
            raise ChainError(f"sending the transaction failed: {exc}") from None
        result = TxResult("0x" + bytes(tx_hash).hex(), int(receipt["blockNumber"]), int(receipt["gasUsed"]))
        if receipt["status"] != 1:
            raise ChainError(f"transaction {result.tx_hash} reverted in block {result.block}")
        address = receipt.get("contractAddress")
        return result, (str(address) if address else None)

    def contract(self, name: str, address: str) -> Contract:
        return self.w3.eth.contract(address=to_checksum_address(address), abi=load_artifact(name).abi)


def deploy(chain: Chain, *, poster: str | None = None, owner: str | None = None,
           unbonding_delay_s: int = DEFAULT_UNBONDING_S, attester: str | None = None) -> Deployment:
    """Deploy Settlement (which deploys CorollaCredit) and NodeRegistry; `owner` (default: the
    deployer) owns both.

    `poster` (default: the deployer) is the address the ledger posts epoch roots from.
    `attester` (default: the poster, i.e. the ledger's chain key) signs the `Binding`
    attestations without which NodeRegistry registers no node key; it is set here when the
    deployer is the owner, otherwise the owner calls `setAttester` itself.
    """
    owner = to_checksum_address(owner or chain.address)
    poster = to_checksum_address(poster or chain.address)
    if attester is not None and owner != to_checksum_address(chain.address):
        raise ChainError("only the owner sets the attester: deploy without an attester, then setAttester as owner")
    first, settlement = chain.send(deploy=load_artifact("Settlement"), args=[owner, poster])
    assert settlement is not None
    token = chain.contract("Settlement", settlement).functions.token().call()
    _, registry = chain.send(deploy=load_artifact("NodeRegistry"), args=[owner, token, unbonding_delay_s])
    assert registry is not None
    if owner == to_checksum_address(chain.address):
        setter = chain.contract("NodeRegistry", registry).functions.setAttester
        chain.send(setter(to_checksum_address(attester or poster)))
    return Deployment(chain_id=chain.chain_id, settlement=settlement, token=str(token), registry=registry,
                      deployer=chain.address, block=first.block, unbonding_delay_s=unbonding_delay_s)


class Settlement:
    """Typed calls on the Settlement contract."""

    def __init__(self, chain: Chain, deployment: Deployment):
        self.chain, self.c = chain, chain.contract("Settlement", deployment.settlement)
        self.deployment = deployment

    def latest_epoch(self) -> int:
        return int(self.c.functions.latestEpoch().call())

    def root_of(self, epoch: int) -> bytes:
        return bytes(self.c.functions.roots(epoch).call())

    def claimed(self, account: str) -> int:
        return int(self.c.functions.claimed(to_checksum_address(account)).call())

    def total_claimed(self) -> int:
        return int(self.c.functions.totalClaimed().call())

    def post_root(self, epoch: int, root: bytes, total: int) -> TxResult:
        return self.chain.send(self.c.functions.postRoot(epoch, root, total))[0]

    def claim(self, account: str, cumulative: int, proof: Sequence[bytes]) -> TxResult:
        return self.chain.send(self.c.functions.claim(to_checksum_address(account), cumulative, list(proof)))[0]

    def find_post(self, epoch: int) -> TxResult | None:
        """The transaction that posted `epoch`'s root, from the RootPosted log, or None."""
        logs = self.c.events.RootPosted().get_logs(
            from_block=self.deployment.block, argument_filters={"epoch": epoch})
        if not logs:
            return None
        log = logs[-1]
        receipt = self.chain.w3.eth.get_transaction_receipt(log["transactionHash"])
        return TxResult("0x" + bytes(log["transactionHash"]).hex(), int(log["blockNumber"]), int(receipt["gasUsed"]))


class Token:
    def __init__(self, chain: Chain, deployment: Deployment):
        self.chain, self.c = chain, chain.contract("CorollaCredit", deployment.token)

    def balance_of(self, account: str) -> int:
        return int(self.c.functions.balanceOf(to_checksum_address(account)).call())

    def approve(self, spender: str, amount: int) -> TxResult:
        return self.chain.send(self.c.functions.approve(to_checksum_address(spender), amount))[0]


@dataclass(frozen=True)
class NodeStake:
    operator: str
    unlock_at: int
    stake: int
    unbonding: int


class NodeRegistry:
    """Typed calls on the NodeRegistry contract."""

    def __init__(self, chain: Chain, deployment: Deployment):
        self.chain, self.c = chain, chain.contract("NodeRegistry", deployment.registry)
        self.deployment = deployment

    def node(self, node_key: bytes) -> NodeStake:
        operator, unlock_at, stake, unbonding = self.c.functions.nodes(node_key).call()
        return NodeStake(str(operator), int(unlock_at), int(stake), int(unbonding))

    def attester(self) -> str:
        """The address whose `Binding` attestations admit registrations (zero: none yet)."""
        return str(self.c.functions.attester().call())

    def register(self, node_key: bytes, attestation: bytes) -> TxResult:
        """Bind `node_key` to this chain's account, with the attester's `Binding` signature
        for (node_key, this account) on this registry (ledger/registration.py gets one)."""
        return self.chain.send(self.c.functions.register(node_key, attestation))[0]

    def set_attester(self, attester: str) -> TxResult:
        return self.chain.send(self.c.functions.setAttester(to_checksum_address(attester)))[0]

    def stake(self, node_key: bytes, amount: int) -> TxResult:
        """Approve the registry for `amount` and stake it."""
        Token(self.chain, self.deployment).approve(self.deployment.registry, amount)
        return self.chain.send(self.c.functions.stake(node_key, amount))[0]

    def request_withdrawal(self, node_key: bytes, amount: int) -> TxResult:
        return self.chain.send(self.c.functions.requestWithdrawal(node_key, amount))[0]

    def withdraw(self, node_key: bytes) -> TxResult:
        return self.chain.send(self.c.functions.withdraw(node_key))[0]

    def set_verifier(self, verifier: str, enabled: bool) -> TxResult:
        return self.chain.send(self.c.functions.setVerifier(to_checksum_address(verifier), enabled))[0]

    def set_quorum(self, quorum: int) -> TxResult:
        return self.chain.send(self.c.functions.setQuorum(quorum))[0]

    def slashed(self, receipt_id: bytes) -> bool:
        return bool(self.c.functions.slashedReceipts(receipt_id).call())

    def is_verifier(self, address: str) -> bool:
        return bool(self.c.functions.isVerifier(to_checksum_address(address)).call())

    def quorum(self) -> int:
        return int(self.c.functions.quorum().call())

    def slash(self, node_key: bytes, receipt_id: bytes, amount: int, signatures: Sequence[bytes]) -> TxResult:
        """Submit verifiers' signatures (any order: sorted here by signer, as the contract needs)."""
        req = SlashRequest(self.chain.chain_id, self.deployment.registry, node_key, receipt_id, amount)
        ordered = sorted(signatures, key=lambda s: int(recover_slash_signer(req, s), 16))
        return self.chain.send(self.c.functions.slash(node_key, receipt_id, amount, ordered))[0]
