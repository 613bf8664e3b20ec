"""benchmarks/chain.py runs and reports the gas figures issue #7 asks for, within target."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.chain.anvil import ROOT


def test_chain_benchmark_prints_gas_figures_with_a_claim_under_target(built_contracts: None) -> None:
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "chain.py"), "--json", "--no-anvil"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    figures = json.loads(r.stdout.strip().splitlines()[-1])
    for key in ("claim_gas", "post_root_gas", "slash_gas"):
        assert isinstance(figures[key], int) and figures[key] > 0, (key, figures)
    assert figures["claim_under_target"] is True and figures["claim_gas"] < 80_000
