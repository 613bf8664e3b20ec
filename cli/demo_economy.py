"""The incentive half of `corolla demo`: ledger, verifier, epochs, earnings, priority, chain.

Each step is a small function over real processes and the ledger's HTTP API, so the demo
reads as the data flow of ARCHITECTURE.md: nodes receipt their work -> the ledger stores
it -> a verifier spot-checks it -> an epoch pays it -> the operator spends what it earned
for priority -> (with a local chain) the operator claims its credits on-chain.
"""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from protocol.identity import Identity
from protocol.request_auth import sign_request

ROOT = Path(__file__).resolve().parents[1]


def say(message: str) -> None:
    print(f"[demo] {message}", flush=True)


@dataclass
class Keys:
    """Every identity the demo needs, as key files in the work directory."""

    ledger: Path
    admin: Path
    client: Path
    verifier: Path
    operators: list[Path]

    @classmethod
    def create(cls, workdir: Path, nodes: int) -> Keys:
        folder = workdir / "keys"
        folder.mkdir(parents=True, exist_ok=True)
        paths = {name: folder / f"{name}.key" for name in ("ledger", "admin", "client", "verifier")}
        operators = [folder / f"operator{i}.key" for i in range(nodes)]
        for path in [*paths.values(), *operators]:
            Identity.load_or_create(path)
        return cls(operators=operators, **paths)

    @staticmethod
    def hex(path: Path) -> str:
        return Identity.load(path).public_hex


class LedgerApi:
    """A tiny signed client of the ledger's JSON API (writes carry request-auth headers)."""

    def __init__(self, url: str):
        self.url = url.rstrip("/")
        self.http = httpx.Client(timeout=30)

    def get(self, path: str) -> Any:
        resp = self.http.get(self.url + path)
        resp.raise_for_status()
        return resp.json()

    def post(self, path: str, body: Any, signer: Path) -> Any:
        data = json.dumps(body).encode()
        headers = sign_request(Identity.load(signer), "POST", path, data)
        headers["content-type"] = "application/json"
        resp = self.http.post(self.url + path, content=data, headers=headers)
        if resp.status_code >= 400:
            raise RuntimeError(f"ledger refused POST {path}: {resp.status_code} {resp.text[:300]}")
        return resp.json()

    def close(self) -> None:
        self.http.close()


def find_anvil() -> str | None:
    local = ROOT / "node_modules" / ".bin" / "anvil"
    return str(local) if local.exists() else shutil.which("anvil")


def ledger_args(workdir: Path, keys: Keys, grant: int, chain: dict[str, Any] | None) -> list[str]:
    """`corolla ledger serve` for the demo: SQLite in the work dir, epochs closed by hand,
    receipts payable at once (the verifier runs before the epoch closes), a faucet grant for
    the client, and a small price unit so a tiny model's work earns visible credits."""
    args = ["ledger", "serve", "--db", f"sqlite:///{workdir / 'ledger.db'}", "--port", "0",
            "--key", str(keys.ledger), "--epoch-minutes", "0", "--grace-s", "0", "--flops-per-credit", "1000",
            "--verifier", keys.hex(keys.verifier), "--admin", keys.hex(keys.admin),
            "--grant", f"{keys.hex(keys.client)}:{grant}", "--log-level", "warning"]
    if chain is not None:
        args += ["--chain-rpc", chain["rpc"], "--chain-key", chain["keys"]["poster"],
                 "--chain-addresses", chain["deployment"]]
    return args


def register_manifest(api: LedgerApi, model: Path, signer: Path) -> None:
    from models.manifest_builder import load_manifest

    manifest = load_manifest(model)
    api.post("/v1/manifests", manifest.to_json(), signer)
    say(f"ledger knows model {manifest.manifest_hash().hex()[:16]}… ({manifest.num_blocks} blocks)")


def bind_operator(api: LedgerApi, operator: Path, evm_key_file: str) -> str:
    """Bind the operator's Ed25519 node key to its EVM address (both keys sign)."""
    from protocol.binding import make_binding

    evm_key = Path(evm_key_file).read_text().strip()
    binding = make_binding(Identity.load(operator), evm_key)
    api.post("/v1/accounts/bind", binding.to_json(), operator)
    say(f"operator0 bound its node key to {binding.evm_address}")
    return str(binding.evm_address)


def wait_for_receipts(api: LedgerApi, minimum: int, timeout: float = 60.0) -> int:
    """Nodes ship receipts in the background; wait until the ledger's count settles."""
    deadline, last, stable_since = time.monotonic() + timeout, -1, time.monotonic()
    while time.monotonic() < deadline:
        count = sum(int(n.get("receipts", 0)) for n in api.get("/v1/nodes"))
        if count != last:
            last, stable_since = count, time.monotonic()
        elif count >= minimum and time.monotonic() - stable_since > 3.0:
            break
        time.sleep(0.5)
    say(f"ledger holds {last} receipts from the nodes")
    return last


def run_verifier(model: Path, ledger_url: str, keys: Keys, peers: list[str], workdir: Path) -> None:
    cmd = [sys.executable, "-m", "cli.main", "verifier", "run", "--once", "--ledger", ledger_url,
           "--model", str(model), "--key", str(keys.verifier), "--initial-peers", *peers,
           "--sample-rate", "0.2", "--state", str(workdir / "verifier.sqlite")]
    with open(workdir / "verifier.log", "wb") as log:
        done = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"verifier failed; see {workdir / 'verifier.log'}")


def close_epoch(api: LedgerApi, admin: Path) -> dict[str, Any]:
    epoch = api.post("/v1/epochs/close", {}, admin)
    root = epoch.get("root")
    shown = f"root {root[:18]}…" if root else "no EVM-bound accounts, so no balance root"
    say(f"epoch {epoch.get('number')} closed: {shown}")
    return epoch


def print_earnings(api: LedgerApi, keys: Keys) -> dict[str, int]:
    names = {keys.hex(p): f"operator{i}" for i, p in enumerate(keys.operators)}
    names[keys.hex(keys.client)] = "client"
    verdicts = api.get("/v1/verdicts")
    passed = sum(1 for v in verdicts if str(v.get("result")).lower() in ("pass", "1", "result.pass"))
    say(f"verifier posted {len(verdicts)} verdicts ({passed} pass, {len(verdicts) - passed} other)")
    rows = [("account", "receipts", "pass", "fail", "earned", "balance")]
    earned: dict[str, int] = {}
    for key, name in names.items():
        acct = api.get(f"/v1/accounts/{key}")
        earned[name] = int(acct["earned"])
        rows.append((name, str(acct["receipts"]), str(acct["passes"]), str(acct["fails"]),
                     str(acct["earned"]), str(acct["balance"])))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("    " + "  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)), flush=True)
    return earned


def per_token_ms(client: Any, tokens: int) -> float:
    """Wall time per generated token of one greedy generation (prompt step included)."""
    import torch

    ids = torch.tensor([[1, 4, 5, 6]])  # not the pad id (3): generate would read it as padding
    started = time.perf_counter()
    client.generate(ids, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False)
    return (time.perf_counter() - started) * 1000 / tokens


def priority_under_load(model: Path, peers: list[str], ledger_url: str, operator: Path, budget: int,
                        workdir: Path, free_key: Path, free_clients: int = 2) -> tuple[float, float, float, int]:
    """The operator spends its earnings for priority while free clients load the swarm with bulk forward passes.

    Returns (unloaded ms/token, paid ms/token under load, free ms/token under load, spent)."""
    from client import AutoDistributedModelForCausalLM

    # both clients verify and counter-sign receipts, so the only difference is the ticket
    free = AutoDistributedModelForCausalLM.from_pretrained(str(model), initial_peers=peers, key=str(free_key))
    paid = AutoDistributedModelForCausalLM.from_pretrained(str(model), initial_peers=peers, key=str(operator),
                                                           ledger=ledger_url, spend=budget)
    loaders: list[subprocess.Popen[bytes]] = []
    try:
        per_token_ms(paid, 2)  # escrows the first ticket outside the measurement
        unloaded = per_token_ms(free, 16)
        for i in range(free_clients):
            log = open(workdir / f"free-client{i}.log", "wb")  # noqa: SIM115 - closed with the process
            loaders.append(subprocess.Popen(
                [sys.executable, "-m", "cli.demo_economy", str(model), *peers], stdout=log,
                stderr=subprocess.STDOUT, cwd=ROOT))
        time.sleep(12.0)  # let the free clients import torch and start generating
        paid_runs, free_runs = [], []
        for _ in range(3):  # interleaved, so both see the same load
            paid_runs.append(per_token_ms(paid, 12))
            free_runs.append(per_token_ms(free, 12))
        loaded_paid, loaded_free = statistics.median(paid_runs), statistics.median(free_runs)
        spent = int(getattr(paid.swarm.spending, "spent", 0))
        finished = sum(1 for p in loaders if p.poll() is None or p.returncode == 0)
        say(f"{finished}/{free_clients} free clients were generating alongside")
        return unloaded, loaded_paid, loaded_free, spent
    finally:
        for p in loaders:
            p.terminate()
        for p in loaders:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        paid.close()
        free.close()


def withdraw(api: LedgerApi, operator: Path) -> int:
    """Move the operator's whole balance on-chain: claimable after the next epoch."""
    key = Keys.hex(operator)
    amount = int(api.get(f"/v1/accounts/{key}")["balance"])
    if amount > 0:
        api.post("/v1/withdrawals", {"amount": amount}, operator)
    say(f"operator0 withdrew {amount} credits from the ledger for an on-chain claim")
    return amount


def claim_on_chain(api: LedgerApi, chain: dict[str, Any], evm_key_file: str, address: str) -> tuple[int, int]:
    """Claim the operator's anchored credits; returns (token balance, ledger cumulative)."""
    from web3 import Web3

    cmd = [sys.executable, "-m", "cli.main", "claim", "--ledger", api.url, "--rpc", chain["rpc"],
           "--key", evm_key_file, "--deployment", chain["deployment"]]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"claim failed: {done.stderr.strip()[-500:]}")
    proof = api.get(f"/v1/epochs/latest/proof/{address}")
    w3 = Web3(Web3.HTTPProvider(chain["rpc"]))
    abi = [{"name": "balanceOf", "type": "function", "stateMutability": "view",
            "inputs": [{"name": "a", "type": "address"}], "outputs": [{"name": "", "type": "uint256"}]}]
    token = w3.eth.contract(address=Web3.to_checksum_address(chain["token"]), abi=abi)
    balance = int(token.functions.balanceOf(Web3.to_checksum_address(address)).call())
    return balance, int(proof["cumulative"])


def free_load(model: str, peers: list[str], seconds: float = 120.0) -> None:
    """A free client that keeps the nodes busy with bulk forward passes (batch 4 × 128)."""
    import torch

    from client import AutoDistributedModelForCausalLM

    client = AutoDistributedModelForCausalLM.from_pretrained(model, initial_peers=peers)
    ids = torch.randint(0, client.config.vocab_size, (4, 128))
    deadline = time.monotonic() + seconds
    try:
        with torch.no_grad():
            while time.monotonic() < deadline:
                client(ids)
    finally:
        client.close()


if __name__ == "__main__":  # the demo's free-load worker: python -m cli.demo_economy MODEL PEER...
    free_load(sys.argv[1], sys.argv[2:])
