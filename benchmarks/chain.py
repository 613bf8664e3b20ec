"""Gas of on-chain settlement: post an epoch root, claim with a Merkle proof, slash a node.

Two views, side by side:
- call gas, from the Foundry gas tests (contracts/test/Gas.t.sol, steady state: a 1,024-
  account tree, earlier claims already made) — what the contracts cost to execute;
- transaction gas on a real anvil (if node_modules has it) — what a sender pays, including
  the 21,000 base cost and calldata.
Also prints the per-test totals kept in .gas-snapshot (`forge snapshot`).

    python benchmarks/chain.py [--json] [--no-anvil]

With --json the last line is {"claim_gas", "post_root_gas", "slash_gas", ...}.
Target: a claim under 80k gas.
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


def forge_call_gas() -> dict[str, int]:
    """{'claim': .., 'postRoot': .., 'slash': ..} from the gas tests' `gas <op>:` log lines."""
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


def anvil_tx_gas() -> dict[str, int] | None:
    """Transaction gasUsed of deploy, postRoot, claim and slash on a real anvil; None without anvil."""
    from eth_account import Account

    from ledger.chain import Chain, NodeRegistry, Settlement, connect, deploy
    from protocol.eip712 import SlashRequest, sign_slash
    from protocol.merkle import BalanceTree
    from tests.chain.anvil import ANVIL, DEV_KEYS, Anvil

    if not ANVIL.exists():
        return None
    node = Anvil().start()
    try:
        owner, operator, va, vb = (Account.from_key(k) for k in DEV_KEYS[:4])
        chain = Chain(connect(node.url), owner)
        d = deploy(chain)
        registry = NodeRegistry(chain, d)
        for v in (va, vb):
            registry.set_verifier(v.address, True)
        registry.set_quorum(2)
        settlement = Settlement(chain, d)
        accounts = [operator.address] + [Account.create().address for _ in range(1023)]
        tree = BalanceTree([(a, 10**18 + i) for i, a in enumerate(accounts)])
        settlement.post_root(1, b"\x01" * 32, 1)  # steady state: later epochs overwrite non-zero slots
        post = settlement.post_root(2, tree.root, sum(10**18 + i for i in range(1024)))
        settlement.claim(accounts[5], 10**18 + 5, tree.proof(accounts[5]))  # steady state: totals non-zero
        first = settlement.claim(accounts[7], 10**18 + 7, tree.proof(accounts[7]))
        op = Chain(connect(node.url), operator)
        Settlement(op, d).claim(operator.address, 10**18, tree.proof(operator.address))
        key, receipt = b"\x42" * 32, b"\x24" * 32
        op_registry = NodeRegistry(op, d)
        op_registry.register(key)
        op_registry.stake(key, 10**18)
        req = SlashRequest(d.chain_id, d.registry, key, receipt, 10**17)
        slash = registry.slash(key, receipt, 10**17, [sign_slash(v.key, req) for v in (va, vb)])
        return {"post_root": post.gas_used, "claim": first.gas_used, "slash": slash.gas_used}
    finally:
        node.stop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Gas of post-root, claim and slash (Foundry and anvil).")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    p.add_argument("--no-anvil", action="store_true", help="skip the transaction measurements on anvil")
    args = p.parse_args(argv)
    if not FORGE.exists():
        print("benchmarks/chain.py: forge is absent; run `npm ci` (scripts/setup does)", file=sys.stderr)
        return 2
    call = forge_call_gas()
    tx = None if args.no_anvil else anvil_tx_gas()

    print("operation   call gas (forge)   tx gas (anvil, incl. 21k base + calldata)")
    for name, key, tx_key in [("post root", "postRoot", "post_root"), ("claim", "claim", "claim"),
                              ("slash (2)", "slash", "slash")]:
        shown = f"{tx[tx_key]:>10,}" if tx else "         -"
        print(f"{name:<11} {call[key]:>16,}   {shown}")
    print(f"claim: {call['claim']:,} gas to execute (target < {CLAIM_TARGET:,}: "
          f"{'met' if call['claim'] < CLAIM_TARGET else 'MISSED'}); proof of 10 hashes (1,024 accounts)")
    lines = snapshot_lines()
    if lines:
        print(".gas-snapshot (whole test functions):")
        for line in lines:
            print("  " + line)
    if args.json:
        out = {"claim_gas": call["claim"], "post_root_gas": call["postRoot"], "slash_gas": call["slash"],
               "claim_under_target": call["claim"] < CLAIM_TARGET}
        if tx:
            out |= {"claim_tx_gas": tx["claim"], "post_root_tx_gas": tx["post_root"], "slash_tx_gas": tx["slash"]}
        print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
