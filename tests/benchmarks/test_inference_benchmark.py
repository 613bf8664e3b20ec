"""benchmarks/inference.py runs end to end at a tiny size and prints the keys issue #2 names.

Not a speed test (figures on a shared CI machine mean nothing): it checks that the script
works on a fresh checkout, that the swarm's tokens equal local transformers' in it, and
that its last line is the JSON object other tools read.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_inference_benchmark_prints_its_table_and_json_keys():
    cmd = [sys.executable, str(ROOT / "benchmarks" / "inference.py"), "--layers", "2", "--hidden", "64",
           "--tokens", "4", "--repeats", "1", "--batch", "1", "--seq", "8", "--json"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.strip().splitlines()
    assert any(line.startswith("single-sequence generation") for line in lines)  # the readable table
    result = json.loads(lines[-1])
    for key in ("swarm_tokens_per_s", "local_tokens_per_s", "per_hop_overhead_ms", "forward_tokens_per_s"):
        assert isinstance(result[key], (int, float)), key
    assert result["swarm_tokens_per_s"] > 0 and result["forward_tokens_per_s"] > 0
    assert result["hops"] == 2 and result["swarm_matches_local"] is True
