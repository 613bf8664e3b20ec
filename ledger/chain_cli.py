"""`corolla chain`: deploy the settlement contracts, make an EVM key file.

    corolla chain deploy --rpc URL --key FILE [--out deployment.json] [--poster ADDR]
                         [--unbonding-s N] [--verifier ADDR ...] [--quorum N]
    corolla chain status --rpc URL --addresses FILE
    corolla chain new-key --out FILE
    corolla chain devnet --dir DIR [--port N] [--ready-file PATH]

`devnet` is for one-machine demos: it starts anvil from node_modules on 127.0.0.1, deploys,
writes DIR/deployment.json plus key files of anvil's public dev accounts, and runs until
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

    key = sub.add_parser("new-key", help="write a fresh EVM private key file (mode 0600) and print its address")
    key.add_argument("--out", required=True, help="key file to create; refuses to overwrite")
    return parser


def _deploy(args: argparse.Namespace) -> int:
    from eth_utils import is_address

    from ledger.chain import Chain, ChainError, NodeRegistry, connect, deploy, load_evm_key

    for address in [args.poster, *args.verifier]:
        if address is not None and not is_address(address):
            print(f"corolla chain deploy: {address!r} is not an EVM address (0x + 40 hex digits)", file=sys.stderr)
            return 2
    if args.unbonding_s < 0 or args.quorum < 1 or args.quorum > max(1, len(args.verifier)):
        print("corolla chain deploy: need --unbonding-s >= 0 and 1 <= --quorum <= number of --verifier",
              file=sys.stderr)
        return 2
    try:
        chain = Chain(connect(args.rpc), load_evm_key(args.key))
        deployment = deploy(chain, poster=args.poster, unbonding_delay_s=args.unbonding_s)
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
          f"NodeRegistry {deployment.registry} (block {deployment.block}); wrote {args.out}")
    return 0


def _status(args: argparse.Namespace) -> int:
    from eth_utils import to_checksum_address

    from ledger.chain import ChainError, Deployment, connect, load_artifact

    try:
        d = Deployment.load(args.addresses)
        w3 = connect(args.rpc)
        if w3.eth.chain_id != d.chain_id:
            raise ChainError(f"{args.rpc} is chain {w3.eth.chain_id}, the deployment is on chain {d.chain_id}")
        s = w3.eth.contract(address=to_checksum_address(d.settlement), abi=load_artifact("Settlement").abi).functions
        r = w3.eth.contract(address=to_checksum_address(d.registry), abi=load_artifact("NodeRegistry").abi).functions
        print(f"chain {d.chain_id}  Settlement {d.settlement}  poster {s.poster().call()}")
        print(f"latest epoch {s.latestEpoch().call()}  root 0x{bytes(s.latestRoot().call()).hex()}  "
              f"total {s.latestTotal().call()}  claimed {s.totalClaimed().call()}")
        print(f"NodeRegistry {d.registry}  verifiers {r.verifierCount().call()}  quorum {r.quorum().call()}  "
              f"staked {r.totalStaked().call()}  unbonding delay {d.unbonding_delay_s} s")
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


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    return {"deploy": _deploy, "status": _status, "new-key": _new_key, "devnet": _devnet}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
