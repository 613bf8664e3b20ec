"""Gas of on-chain settlement: post an epoch root, claim with a Merkle proof, slash a node.

Two views, side by side, in a steady state (a 1,024-account tree, so 10-hash proofs; earlier
roots and claims exist, so totals are already non-zero):
- call gas, from the Foundry gas tests (contracts/test/Gas.t.sol): what the contract call
  costs to execute, measured with gasleft() around the one call (a cold contract, as in a
  real transaction; no 21,000 base cost, no calldata cost);
- transaction gas on a real anvil (if node_modules has it): what a sender pays, including the
  21,000 base cost and calldata.
Claims come in two kinds: an account's first claim writes two fresh storage slots (its
`claimed` entry and its token balance, ~2 x 22,100 gas); a repeat claim (an operator that
claimed in an earlier epoch claims again after a new root, the common case) updates them.
Also prints the per-test totals kept in .gas-snapshot (`forge snapshot`).

    .venv/bin/python benchmarks/chain.py [--json] [--no-anvil] [--gwei 1 20]

Target (issue #7): a claim under 80k gas, checked against the first claim's call gas.
With --json the last line is one JSON object: claim_gas, claim_repeat_gas, post_root_gas,
slash_gas, claim_under_target, and with anvil claim_tx_gas, claim_repeat_tx_gas,
post_root_tx_gas, slash_tx_gas.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
FORGE = ROOT / "node_modules" / ".bin" / "forge"
CLAIM_TARGET = 80_000
TX_BASE = 21_000
# (label, key of the forge log line "gas <key>:", key of the anvil measurement)
OPERATIONS = [("post root", "postRoot", "post_root"), ("claim, first", "claim", "claim"),
              ("claim, repeat", "claimRepeat", "claim_repeat"), ("slash, quorum 2", "slash", "slash")]


def forge_call_gas() -> dict[str, int]:
    """{'postRoot', 'claim', 'claimRepeat', 'slash'} from the gas tests' `gas <op>:` log lines."""
    r = subprocess.run([str(FORGE), "test", "--match-contract", "GasTest", "--json", "-vv"], cwd=ROOT,
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"forge gas tests failed:\n{r.stdout[-2000:]}{r.stderr[-2000:]}")
    gas = {}
    for suite in json.loads(r.stdout).values():
        for result in suite["test_results"].values():
            for line in result["decoded_logs"]:
                m = re.match(r"gas (\w+)[^:]*: (\d+)", line)
                if m:
                    gas[m.group(1)] = int(m.group(2))
    return gas


def snapshot_lines() -> list[str]:
    path = ROOT / ".gas-snapshot"
    return [line for line in path.read_text().splitlines() if line.startswith("GasTest")] if path.exists() else []


def calldata_gas(data: bytes) -> int:
    """Calldata cost of a transaction: 4 gas per zero byte, 16 per other byte."""
    return sum(4 if b == 0 else 16 for b in data)


def anvil_tx_gas() -> dict[str, tuple[int, int]] | None:
    """{op: (transaction gasUsed, of which calldata)} on a real anvil; None without anvil."""
    from eth_account import Account
    from eth_utils import keccak, to_checksum_address

    from ledger.chain import Chain, NodeRegistry, Settlement, TxResult, connect, deploy
    from protocol.eip712 import BindingAttestation, SlashRequest, sign_binding, sign_slash
    from protocol.merkle import BalanceTree
    from tests.chain.anvil import ANVIL, DEV_KEYS, Anvil

    if not ANVIL.exists():
        return None
    node = Anvil().start()
    try:
        owner, operator, va, vb = (Account.from_key(k) for k in DEV_KEYS[:4])
        chain = Chain(connect(node.url), owner)

        def measured(tx: TxResult) -> tuple[int, int]:
            return tx.gas_used, calldata_gas(bytes(chain.w3.eth.get_transaction(tx.tx_hash)["input"]))

        d = deploy(chain)
        registry = NodeRegistry(chain, d)
        for v in (va, vb):
            registry.set_verifier(v.address, True)
        registry.set_quorum(2)
        settlement = Settlement(chain, d)
        # Fixed pseudo-random addresses: the proofs, hence the calldata, are the same every run.
        accounts = [operator.address] + [to_checksum_address(keccak(i.to_bytes(32, "big"))[12:])
                                          for i in range(1, 1024)]

        def tree(epoch: int) -> BalanceTree:  # account i holds a cumulative epoch * 1e18 + i
            return BalanceTree([(a, epoch * 10**18 + i) for i, a in enumerate(accounts)])

        settlement.post_root(1, b"\x01" * 32, 1)  # steady state: later epochs overwrite non-zero slots
        t2, t3 = tree(2), tree(3)
        post = settlement.post_root(2, t2.root, sum(2 * 10**18 + i for i in range(1024)))
        settlement.claim(accounts[5], 2 * 10**18 + 5, t2.proof(accounts[5]))  # steady state: totals non-zero
        first = settlement.claim(accounts[7], 2 * 10**18 + 7, t2.proof(accounts[7]))
        settlement.post_root(3, t3.root, sum(3 * 10**18 + i for i in range(1024)))
        repeat = settlement.claim(accounts[7], 3 * 10**18 + 7, t3.proof(accounts[7]))
        op = Chain(connect(node.url), operator)
        Settlement(op, d).claim(operator.address, 3 * 10**18, t3.proof(operator.address))
        key, receipt = b"\x42" * 32, b"\x24" * 32
        op_registry = NodeRegistry(op, d)
        op_registry.register(key, sign_binding(owner.key, BindingAttestation(d.chain_id, d.registry, key,
                                                                              operator.address)))
        op_registry.stake(key, 10**18)
        req = SlashRequest(d.chain_id, d.registry, key, receipt, 10**17)
        slash = registry.slash(key, receipt, 10**17, [sign_slash(v.key, req) for v in (va, vb)])
        return {"post_root": measured(post), "claim": measured(first), "claim_repeat": measured(repeat),
                "slash": measured(slash)}
    finally:
        node.stop()


def eth(gas: int, gwei: float) -> str:
    return f"{gas * gwei * 1e-9:.6f} ETH"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description="Gas of post-root, claim (first and repeat) and slash: call gas from the Foundry gas "
                    "tests and transaction gas on anvil, with the cost of a claim in ETH. The 80k target "
                    "is checked against the first claim's call gas.")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    p.add_argument("--no-anvil", action="store_true", help="skip the transaction measurements on anvil")
    p.add_argument("--gwei", type=float, nargs="+", default=[1.0, 20.0], metavar="GWEI",
                   help="gas prices at which to state the cost of a claim (default: 1 20)")
    args = p.parse_args(argv)
    if not FORGE.exists():
        print("benchmarks/chain.py: forge is absent; run `npm ci` (scripts/setup does)", file=sys.stderr)
        return 2
    call = forge_call_gas()
    tx = None if args.no_anvil else anvil_tx_gas()

    print(f"{'operation':<16} {'call gas (forge)':>16} {'tx gas (anvil)':>15} {'of which base':>14} "
          f"{'calldata':>9}")
    for label, key, tx_key in OPERATIONS:
        cells = (f"{tx[tx_key][0]:>15,} {TX_BASE:>14,} {tx[tx_key][1]:>9,}" if tx
                 else f"{'-':>15} {'-':>14} {'-':>9}")
        print(f"{label:<16} {call[key]:>16,} {cells}")
    print("call gas: the contract call alone, from a contract (Gas.t.sol). tx gas: a whole transaction, "
          "21,000 base + calldata + execution.")
    met = call["claim"] < CLAIM_TARGET
    print(f"target: claim < {CLAIM_TARGET:,} gas, checked against the first claim's call gas: "
          f"{call['claim']:,} ({'met' if met else 'MISSED'}); 10-hash proof (1,024 accounts)")
    if tx:
        first_tx, repeat_tx = tx["claim"][0], tx["claim_repeat"][0]
        print(f"repeat claim transaction, all-in: {repeat_tx:,} gas "
              f"({'under' if repeat_tx < CLAIM_TARGET else 'NOT under'} {CLAIM_TARGET:,}); "
              f"first claim transaction {first_tx:,} gas (two fresh storage slots)")
        for gwei in args.gwei:
            print(f"cost of a claim at {gwei:g} gwei: {eth(repeat_tx, gwei)} (repeat), "
                  f"{eth(first_tx, gwei)} (first)")
    lines = snapshot_lines()
    if lines:
        print(".gas-snapshot (whole test functions; set-up work is not metered):")
        for line in lines:
            print("  " + line)
    if args.json:
        out: dict[str, int | bool] = {
            "claim_gas": call["claim"], "claim_repeat_gas": call["claimRepeat"], "post_root_gas": call["postRoot"],
            "slash_gas": call["slash"], "claim_under_target": met}
        if tx:
            out |= {"claim_tx_gas": tx["claim"][0], "claim_repeat_tx_gas": tx["claim_repeat"][0],
                    "post_root_tx_gas": tx["post_root"][0], "slash_tx_gas": tx["slash"][0]}
        print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
