"""`corolla chain`: deploy the settlement contracts, make an EVM key file, register and slash a node.

    corolla chain deploy --rpc URL --key FILE [--out deployment.json] [--poster ADDR] [--attester ADDR]
                         [--unbonding-s N] [--verifier ADDR ...] [--quorum N]
    corolla chain status --rpc URL --addresses FILE
    corolla chain new-key --out FILE
    corolla chain devnet --dir DIR [--port N] [--ready-file PATH]
    corolla chain sign-slash --ledger URL --key FILE (--receipt ID | --verdict ID) [--amount N]
                             [--rpc URL] [--deployment FILE] [--json]
    corolla chain slash --rpc URL --key FILE --node KEY --receipt ID --amount N
                        --signature SIG [--signature SIG ...] [--ledger URL | --deployment FILE] [--json]
    corolla chain register --ledger URL --rpc URL --key FILE --node-key FILE [--deployment FILE] [--json]

The NodeRegistry registers a node key only with an EIP-712 attestation from its attester,
which `deploy` sets to --attester (default: the poster, i.e. the ledger's --chain-key, which
itself defaults to the deployer). `register` is run by a node operator: it signs the
binding of the node's Ed25519 key to its EVM address with both keys, gets the ledger's
attestation (POST /v1/bindings/attest) and sends `register` (ledger/registration.py).

`sign-slash` and `slash` turn a verifier's FAIL verdict into an on-chain slash of the
node's stake (ledger/slashing.py says what each checks).

`devnet` is for one-machine demos: it starts anvil from node_modules on 127.0.0.1, deploys,
writes DIR/deployment.json plus key files of anvil's public dev accounts (poster.key is the
ledger's --chain-key: it posts roots and is the registry's attester), and runs until
SIGINT/SIGTERM. Never use those keys on a real chain.

The deployment file is what `corolla ledger serve --chain-addresses FILE` reads.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# anvil's deterministic dev accounts (mnemonic "test test ... junk"); public, funded on anvil only.
ANVIL_DEV_KEYS = [
    "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80",
    "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d",
    "0x5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a",
    "0x7c852118294e51e653712a81e05800f419141751be58f605c371e15141b007a6",
    "0x47e179ec197488593b187f80a00eb0da91f1b9d0b13f8733639f19c30a34926a",
    "0x8b3a350cf5c34c9194ca85829a2df0ec3153be0318b5e2d3348e872092edffba",
]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="corolla chain", description="Deploy and manage Corolla's contracts.")
    sub = parser.add_subparsers(dest="cmd", required=True)

    dep = sub.add_parser("deploy", help="deploy Settlement, CorollaCredit and NodeRegistry; write their addresses")
    dep.add_argument("--rpc", required=True, help="EVM JSON-RPC URL, e.g. http://127.0.0.1:8545")
    dep.add_argument("--key", required=True, help="file holding the deployer's hex private key (owner of both contracts)")
    dep.add_argument("--out", default="deployment.json", help="where to write the addresses (default deployment.json)")
    dep.add_argument("--poster", help="address allowed to post epoch roots (default: the deployer)")
    dep.add_argument("--attester", metavar="ADDRESS",
                     help="address whose EIP-712 Binding attestations admit node registrations: the ledger's "
                     "--chain-key (default: the poster)")
    dep.add_argument("--unbonding-s", type=int, default=7 * 24 * 3600,
                     help="seconds between a stake withdrawal request and the withdrawal (default 7 days)")
    dep.add_argument("--verifier", action="append", default=[], metavar="ADDRESS",
                     help="register this address as a slashing verifier (repeatable)")
    dep.add_argument("--quorum", type=int, default=1, help="verifier signatures needed to slash (default 1)")

    st = sub.add_parser("status", help="print the latest anchored epoch, claims and the verifier set")
    st.add_argument("--rpc", required=True, help="EVM JSON-RPC URL")
    st.add_argument("--addresses", required=True, help="deployment file written by `corolla chain deploy`")

    dev = sub.add_parser("devnet", help="start a local anvil, deploy, write keys and addresses; run until stopped")
    dev.add_argument("--dir", required=True, help="directory for deployment.json and the dev key files")
    dev.add_argument("--port", type=int, default=0, help="anvil port on 127.0.0.1 (default: a free one)")
    dev.add_argument("--ready-file", help="write {rpc, deployment, keys...} as JSON here once deployed")

    sign = sub.add_parser("sign-slash", help="as a verifier, sign the slash of a failed receipt's node (EIP-712)")
    sign.add_argument("--ledger", required=True, help="ledger URL the FAIL verdict and its receipt are read from")
    sign.add_argument("--key", required=True, help="file holding the verifier's EVM private key")
    which = sign.add_mutually_exclusive_group(required=True)
    which.add_argument("--receipt", help="id of the failed receipt (its first FAIL verdict is used)")
    which.add_argument("--verdict", help="id of the FAIL verdict")
    sign.add_argument("--amount", type=int, help="token units to slash (default: the ledger's slash_multiple "
                      "× the receipt's value, so every verifier signs the same terms)")
    sign.add_argument("--rpc", help="EVM JSON-RPC URL: also check the node is registered, the receipt not yet "
                      "slashed and the key a registered verifier")
    sign.add_argument("--deployment", help="deployment file (default: the one the ledger publishes at /v1/chain)")
    sign.add_argument("--json", action="store_true", help="print the signature with its terms as one JSON line")

    sl = sub.add_parser("slash", help="submit verifiers' signatures to slash a node's stake for a failed receipt")
    sl.add_argument("--rpc", required=True, help="EVM JSON-RPC URL")
    sl.add_argument("--key", required=True, help="EVM key file of the sender (pays the gas; anyone may send)")
    sl.add_argument("--node", required=True, help="the node's Ed25519 public key (64 hex digits)")
    sl.add_argument("--receipt", required=True, help="the failed receipt's id (64 hex digits)")
    sl.add_argument("--amount", required=True, type=int, help="token units to slash, as the verifiers signed")
    sl.add_argument("--signature", action="append", required=True, metavar="SIG",
                    help="a verifier's signature from `corolla chain sign-slash` (repeat for each)")
    src = sl.add_mutually_exclusive_group(required=True)
    src.add_argument("--deployment", help="deployment file written by `corolla chain deploy`")
    src.add_argument("--ledger", help="ledger URL whose /v1/chain names the deployment")
    sl.add_argument("--json", action="store_true", help="print the result as one JSON line")

    reg = sub.add_parser("register", help="as a node operator, register the node's Ed25519 key to your EVM "
                         "address with the ledger's attestation")
    reg.add_argument("--ledger", required=True, help="ledger URL that attests the binding (its --chain-key is the "
                     "registry's attester)")
    reg.add_argument("--rpc", required=True, help="EVM JSON-RPC URL")
    reg.add_argument("--key", required=True, help="file holding the operator's EVM private key (sends register)")
    reg.add_argument("--node-key", required=True, help="the node's Ed25519 identity key file (corolla keys new)")
    reg.add_argument("--deployment", help="deployment file (default: the one the ledger publishes at /v1/chain)")
    reg.add_argument("--json", action="store_true", help="print the result as one JSON line")

    key = sub.add_parser("new-key", help="write a fresh EVM private key file (mode 0600) and print its address")
    key.add_argument("--out", required=True, help="key file to create; refuses to overwrite")
    return parser


def _deploy(args: argparse.Namespace) -> int:
    from eth_utils import is_address

    from ledger.chain import Chain, ChainError, NodeRegistry, connect, deploy, load_evm_key

    for address in [args.poster, args.attester, *args.verifier]:
        if address is not None and not is_address(address):
            print(f"corolla chain deploy: {address!r} is not an EVM address (0x + 40 hex digits)", file=sys.stderr)
            return 2
    if args.unbonding_s < 0 or args.quorum < 1 or args.quorum > max(1, len(args.verifier)):
        print("corolla chain deploy: need --unbonding-s >= 0 and 1 <= --quorum <= number of --verifier",
              file=sys.stderr)
        return 2
    try:
        chain = Chain(connect(args.rpc), load_evm_key(args.key))
        deployment = deploy(chain, poster=args.poster, unbonding_delay_s=args.unbonding_s, attester=args.attester)
        registry = NodeRegistry(chain, deployment)
        for verifier in args.verifier:
            registry.set_verifier(verifier, True)
        if args.quorum != 1:
            registry.set_quorum(args.quorum)
    except ChainError as exc:
        print(f"corolla chain deploy: {exc}", file=sys.stderr)
        return 2
    deployment.save(args.out)
    print(f"chain {deployment.chain_id}: Settlement {deployment.settlement}, CorollaCredit {deployment.token}, "
          f"NodeRegistry {deployment.registry} (block {deployment.block}, attester "
          f"{args.attester or args.poster or chain.address}); wrote {args.out}")
    return 0


def _status(args: argparse.Namespace) -> int:
    from eth_utils import to_checksum_address

    from ledger.chain import ChainError, Deployment, connect, load_artifact

    try:
        d = Deployment.load(args.addresses)
        w3 = connect(args.rpc)
        d.check_chain_id(w3.eth.chain_id, args.rpc)
        s = w3.eth.contract(address=to_checksum_address(d.settlement), abi=load_artifact("Settlement").abi).functions
        r = w3.eth.contract(address=to_checksum_address(d.registry), abi=load_artifact("NodeRegistry").abi).functions
        print(f"chain {d.chain_id}  Settlement {d.settlement}  poster {s.poster().call()}")
        print(f"latest epoch {s.latestEpoch().call()}  root 0x{bytes(s.latestRoot().call()).hex()}  "
              f"total {s.latestTotal().call()}  claimed {s.totalClaimed().call()}")
        print(f"NodeRegistry {d.registry}  verifiers {r.verifierCount().call()}  quorum {r.quorum().call()}  "
              f"staked {r.totalStaked().call()}  unbonding delay {d.unbonding_delay_s} s  "
              f"attester {r.attester().call()}")
    except ChainError as exc:
        print(f"corolla chain status: {exc}", file=sys.stderr)
        return 2
    return 0


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _devnet(args: argparse.Namespace) -> int:
    from ledger.chain import Chain, ChainError, NodeRegistry, connect, deploy, load_evm_key

    local = ROOT / "node_modules" / ".bin" / "anvil"
    anvil = str(local) if local.exists() else shutil.which("anvil")
    if anvil is None:
        print("corolla chain devnet: anvil is not installed; run `npm ci` at the repository root", file=sys.stderr)
        return 2
    out = Path(args.dir)
    out.mkdir(parents=True, exist_ok=True)
    port = args.port or _free_port()
    rpc = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([anvil, "--host", "127.0.0.1", "--port", str(port), "--silent"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    stop = False

    def _stop(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                w3 = connect(rpc, timeout_s=2)
                break
            except ChainError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    print(f"corolla chain devnet: anvil did not start on {rpc}", file=sys.stderr)
                    return 2
                time.sleep(0.1)
        names = ["deployer", "poster", "operator", "verifier-a", "verifier-b", "spare"]
        keys = {}
        for name, key in zip(names, ANVIL_DEV_KEYS, strict=True):
            path = out / f"{name}.key"
            path.write_text(key + "\n")
            path.chmod(0o600)
            keys[name] = str(path)
        chain = Chain(w3, load_evm_key(keys["deployer"]))
        deployment = deploy(chain, poster=load_evm_key(keys["poster"]).address, unbonding_delay_s=60)
        registry = NodeRegistry(chain, deployment)
        for name in ("verifier-a", "verifier-b"):
            registry.set_verifier(load_evm_key(keys[name]).address, True)
        deployment.save(out / "deployment.json")
        info = {"rpc": rpc, "deployment": str(out / "deployment.json"), "keys": keys, "pid": os.getpid(),
                "settlement": deployment.settlement, "token": deployment.token, "registry": deployment.registry}
        if args.ready_file:
            Path(args.ready_file).write_text(json.dumps(info) + "\n")
        print(f"devnet on {rpc}: Settlement {deployment.settlement}, NodeRegistry {deployment.registry}; "
              f"keys and deployment.json in {out}", flush=True)
        while not stop and proc.poll() is None:
            time.sleep(0.2)
        return 0 if stop else 1
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _new_key(args: argparse.Namespace) -> int:
    from eth_account import Account

    path = Path(args.out)
    key = secrets.token_bytes(32)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        print(f"corolla chain new-key: {path} exists; refusing to overwrite a key", file=sys.stderr)
        return 2
    with os.fdopen(fd, "w") as f:
        f.write("0x" + key.hex() + "\n")
    print(Account.from_key(key).address)
    return 0


def _sign_slash(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from ledger.chain import Chain, ChainError, Deployment, NodeRegistry, connect, load_evm_key
    from ledger.slashing import deployment_from_ledger, fetch_failed_receipt, sign_failed_receipt

    try:
        account = load_evm_key(args.key)
        failed = fetch_failed_receipt(args.ledger, receipt_id=args.receipt, verdict_id=args.verdict)
        deployment = Deployment.load(args.deployment) if args.deployment else deployment_from_ledger(args.ledger)
        registry = None
        if args.rpc:
            registry = NodeRegistry(Chain(connect(args.rpc), account), deployment)
        signed = sign_failed_receipt(failed, account, deployment, args.amount, registry)
    except ChainError as exc:
        print(f"corolla chain sign-slash: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(asdict(signed)) if args.json else signed.signature)
    return 0


def _slash(args: argparse.Namespace) -> int:
    from ledger.chain import Chain, ChainError, Deployment, connect, load_evm_key
    from ledger.slashing import deployment_from_ledger, submit_slash

    try:
        deployment = Deployment.load(args.deployment) if args.deployment else deployment_from_ledger(args.ledger)
        chain = Chain(connect(args.rpc), load_evm_key(args.key))
        tx, stake = submit_slash(chain, deployment, args.node, args.receipt, args.amount, args.signature)
    except ChainError as exc:
        print(f"corolla chain slash: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"tx_hash": tx.tx_hash, "block": tx.block, "gas_used": tx.gas_used, "stake": stake}))
    else:
        print(f"slashed node {args.node.removeprefix('0x')} for receipt {args.receipt.removeprefix('0x')}: "
              f"tx {tx.tx_hash} (block {tx.block}); stake left {stake}")
    return 0


def _register(args: argparse.Namespace) -> int:
    from ledger.chain import Chain, ChainError, Deployment, connect, load_evm_key
    from ledger.registration import register_node
    from ledger.slashing import deployment_from_ledger
    from protocol.identity import Identity

    try:
        node = Identity.load(args.node_key)
    except (OSError, ValueError) as exc:
        print(f"corolla chain register: {exc}", file=sys.stderr)
        return 2
    try:
        deployment = Deployment.load(args.deployment) if args.deployment else deployment_from_ledger(args.ledger)
        chain = Chain(connect(args.rpc), load_evm_key(args.key))
        tx, att = register_node(chain, deployment, node, args.ledger)
    except ChainError as exc:
        print(f"corolla chain register: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"node_key": node.public_hex, "operator": chain.address, "registry": deployment.registry,
                          "attester": att.attester, "tx_hash": tx.tx_hash, "block": tx.block,
                          "gas_used": tx.gas_used}))
    else:
        print(f"registered node {node.public_hex} to {chain.address} in NodeRegistry {deployment.registry}: "
              f"tx {tx.tx_hash} (block {tx.block})")
    return 0


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    return {"deploy": _deploy, "status": _status, "new-key": _new_key, "devnet": _devnet,
            "sign-slash": _sign_slash, "slash": _slash, "register": _register}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
