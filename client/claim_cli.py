"""`corolla claim`: turn settled ledger credits into CorollaCredit tokens on-chain.

    corolla claim --ledger URL --rpc URL --key FILE [--account ADDRESS]
                  [--settlement ADDRESS | --deployment FILE] [--json]

Fetches the Merkle proof of the account's cumulative balance from the ledger
(`GET /v1/epochs/latest/proof/{address}`, or the proof for the epoch the chain holds if the
ledger is ahead of the chain), and submits `Settlement.claim`. The key pays the gas; the
tokens go to the account (the key's own address unless --account names another). A
second claim of the same balance pays nothing and says so.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

# The part of Settlement's ABI a claimer needs (the full ABI lives in forge's out/).
SETTLEMENT_ABI: list[dict[str, Any]] = [
    {"type": "function", "name": "claim", "stateMutability": "nonpayable",
     "inputs": [{"name": "account", "type": "address"}, {"name": "cumulative", "type": "uint256"},
                {"name": "proof", "type": "bytes32[]"}],
     "outputs": [{"name": "amount", "type": "uint256"}]},
    {"type": "function", "name": "claimed", "stateMutability": "view",
     "inputs": [{"name": "account", "type": "address"}], "outputs": [{"name": "", "type": "uint256"}]},
    {"type": "function", "name": "latestEpoch", "stateMutability": "view",
     "inputs": [], "outputs": [{"name": "", "type": "uint64"}]},
    {"type": "function", "name": "latestRoot", "stateMutability": "view",
     "inputs": [], "outputs": [{"name": "", "type": "bytes32"}]},
    {"type": "function", "name": "token", "stateMutability": "view",
     "inputs": [], "outputs": [{"name": "", "type": "address"}]},
]
BALANCE_OF_ABI: list[dict[str, Any]] = [
    {"type": "function", "name": "balanceOf", "stateMutability": "view",
     "inputs": [{"name": "account", "type": "address"}], "outputs": [{"name": "", "type": "uint256"}]},
]


class ClaimError(Exception):
    """A user-facing failure: one line, exit code 2."""


@dataclass
class ClaimResult:
    account: str
    epoch: int
    cumulative: int
    paid: int
    balance: int
    tx_hash: str | None
    block: int | None
    gas_used: int | None


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="corolla claim", description="Claim settled credits on-chain with a Merkle "
                                "proof from the ledger.")
    p.add_argument("--ledger", required=True, help="ledger base URL, e.g. http://127.0.0.1:8000")
    p.add_argument("--rpc", required=True, help="EVM JSON-RPC URL of the settlement chain")
    p.add_argument("--key", required=True, help="file with the hex EVM private key that sends (and pays for) the claim")
    p.add_argument("--account", help="EVM address to claim for (default: the key's address); tokens go there")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--settlement", help="Settlement contract address")
    where.add_argument("--deployment", help="deployment file from `corolla chain deploy` (default: ask the ledger)")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    return p


def _load_key(path: str) -> Any:
    from eth_account import Account

    try:
        text = Path(path).read_text().strip()
    except OSError as exc:
        raise ClaimError(f"cannot read key file {path}: {exc.strerror}") from None
    try:
        return Account.from_key(text if text.startswith("0x") else "0x" + text)
    except (ValueError, TypeError):
        raise ClaimError(f"key file {path} must hold one 32-byte hex EVM private key") from None


def _settlement_address(args: argparse.Namespace, http: Any) -> str:
    if args.settlement:
        return str(args.settlement)
    if args.deployment:
        try:
            return str(json.loads(Path(args.deployment).read_text())["settlement"])
        except (OSError, KeyError, json.JSONDecodeError):
            raise ClaimError(f"{args.deployment} is not a deployment file from `corolla chain deploy`") from None
    r = http.get("/v1/chain")
    if r.status_code != 200 or "settlement" not in r.json():
        raise ClaimError("the ledger does not publish its Settlement address: pass --settlement or --deployment")
    return str(r.json()["settlement"])


def _proof(http: Any, address: str, epoch: int | None) -> dict[str, Any]:
    path = f"/v1/epochs/{'latest' if epoch is None else epoch}/proof/{address}"
    r = http.get(path)
    if r.status_code == 404:
        where = "any epoch" if epoch is None else f"epoch {epoch}"
        raise ClaimError(f"the ledger has no claimable balance for {address} in {where}")
    if r.status_code != 200:
        raise ClaimError(f"the ledger answered {r.status_code} to GET {path}: {r.text[:200]}")
    return dict(r.json())


def claim(ledger_url: str, rpc_url: str, key_file: str, account: str | None = None,
          settlement: str | None = None, deployment: str | None = None) -> ClaimResult:
    """Fetch the proof and claim; ClaimError for anything the user can fix."""
    import httpx
    from eth_utils import is_address, to_checksum_address
    from web3 import Web3
    from web3.exceptions import ContractCustomError, ContractLogicError

    sender = _load_key(key_file)
    if account is not None and not is_address(account):
        raise ClaimError(f"--account {account!r} is not an EVM address")
    address = to_checksum_address(account or sender.address)
    args = argparse.Namespace(settlement=settlement, deployment=deployment)
    with httpx.Client(base_url=ledger_url.rstrip("/"), timeout=30) as http:
        try:
            contract_address = _settlement_address(args, http)
            proof = _proof(http, address, None)
            w3 = Web3(Web3.HTTPProvider(rpc_url, request_kwargs={"timeout": 30}, exception_retry_configuration=None))
            try:
                c = w3.eth.contract(address=to_checksum_address(contract_address), abi=SETTLEMENT_ABI)
                on_chain = int(c.functions.latestEpoch().call())
            except Exception as exc:
                raise ClaimError(f"cannot read Settlement {contract_address} at {rpc_url}: {exc}") from None
            if on_chain == 0:
                raise ClaimError("no epoch has been anchored on-chain yet; try again after the ledger anchors one")
            if int(proof["epoch"]) != on_chain:  # the ledger is ahead of (or behind) the chain
                proof = _proof(http, address, on_chain)
        except httpx.TransportError as exc:
            raise ClaimError(f"cannot reach the ledger at {ledger_url}: {exc}") from None

    cumulative = int(proof["cumulative"])
    token = w3.eth.contract(address=c.functions.token().call(), abi=BALANCE_OF_ABI)
    already = int(c.functions.claimed(address).call())
    if cumulative <= already:
        return ClaimResult(address, on_chain, cumulative, 0, int(token.functions.balanceOf(address).call()),
                           None, None, None)
    fn = c.functions.claim(address, cumulative, [bytes.fromhex(p.removeprefix("0x")) for p in proof["proof"]])
    try:
        tx = fn.build_transaction({"from": sender.address, "chainId": w3.eth.chain_id,
                                   "nonce": w3.eth.get_transaction_count(sender.address, "pending")})
    except (ContractCustomError, ContractLogicError) as exc:
        raise ClaimError(f"the Settlement contract refused the claim (proof for epoch {on_chain}): {exc}") from None
    tx_hash = w3.eth.send_raw_transaction(sender.sign_transaction(tx).raw_transaction)
    receipt = w3.eth.wait_for_transaction_receipt(tx_hash, timeout=120)
    if receipt["status"] != 1:
        raise ClaimError(f"claim transaction 0x{bytes(tx_hash).hex()} reverted")
    return ClaimResult(address, on_chain, cumulative, cumulative - already,
                       int(token.functions.balanceOf(address).call()), "0x" + bytes(tx_hash).hex(),
                       int(receipt["blockNumber"]), int(receipt["gasUsed"]))


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    try:
        result = claim(args.ledger, args.rpc, args.key, args.account, args.settlement, args.deployment)
    except ClaimError as exc:
        print(f"corolla claim: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(asdict(result)))
    elif result.paid == 0:
        print(f"nothing to claim for {result.account}: its cumulative {result.cumulative} (epoch {result.epoch}) "
              f"is already claimed; token balance {result.balance}")
    else:
        print(f"claimed {result.paid} for {result.account} (cumulative {result.cumulative}, epoch {result.epoch}) "
              f"in tx {result.tx_hash}, block {result.block}, {result.gas_used} gas; token balance {result.balance}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
