"""benchmarks/receipts.py (and receipts_in_process.py) run end to end at a tiny size and prints the keys issue #3 names.

Not a speed test: it checks that the script works on a fresh checkout, that both swarms
generate the same tokens, that the client checked a receipt for every step of every hop
(sent in batches, `receipt_batch`), and that its last line is the JSON object other tools read.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_receipts_benchmark_prints_its_table_and_json_keys():
    rounds, tokens = 2, 5
    cmd = [sys.executable, str(ROOT / "benchmarks" / "receipts.py"), "--layers", "2", "--hidden", "64",
           "--tokens", str(tokens), "--rounds", str(rounds), "--batch", "1", "--seq", "8", "--receipt-batch", "3",
           "--json"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.strip().splitlines()
    assert any(line.startswith("generation (ms/token)") for line in lines)  # the readable table
    result = json.loads(lines[-1])
    for key in ("overhead_fraction", "forward_overhead_fraction", "latency_ms_per_token_on",
                "latency_ms_per_token_off", "sign_us_per_receipt", "verify_us_per_receipt", "blake3_mb_per_s",
                "node_receipt_us_per_token", "node_receipt_fraction", "client_check_us_per_receipt"):
        assert isinstance(result[key], (int, float)), key
    low, high = result["overhead_fraction_ci95"]
    assert low <= high
    assert result["outputs_identical"] is True and result["receipt_batch"] == 3
    assert result["node_receipt_us_per_token"] > 0 and result["client_check_us_per_receipt"] > 0
    # generations: the check run plus `rounds` timed ones, each `tokens` steps (prefill + tokens - 1
    # fed back) on 2 hops; forwards: warm-up plus `rounds`, one receipt per hop each
    steps = (1 + rounds) * tokens
    assert result["receipts_checked_by_client"] == 2 * steps + 2 * (1 + rounds)


def test_in_process_benchmark_checks_every_receipt_it_signs():
    """Every step's receipt is signed, stored (acks attached) and checked by the real receipt
    book: the count is exact, so a receipt the node failed to sign or the client rejected shows."""
    tokens, sessions = 6, 2
    cmd = [sys.executable, str(ROOT / "benchmarks" / "receipts_in_process.py"), "--layers", "2", "--hidden", "64",
           "--tokens", str(tokens), "--sessions", str(sessions), "--receipt-batch", "3", "--json"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.strip().splitlines()
    assert any(line.startswith("node receipt work") for line in lines)
    result = json.loads(lines[-1])
    assert result["receipts_checked"] == (1 + sessions) * tokens  # a warm-up session, then the timed ones
    assert result["node_receipt_us_per_token"] > 0 and result["node_compute_us_per_token"] > 0
    assert 0 < result["node_receipt_fraction"] and result["client_check_us_per_receipt"] > 0


@pytest.mark.parametrize("script, args, message", [
    ("receipts_in_process.py", ["--tokens", "2", "--receipt-batch", "4"], "--tokens >= --receipt-batch"),
    ("receipts_in_process.py", ["--receipt-batch", "0"], "--receipt-batch must be from 1 to 16"),
    ("receipts_in_process.py", ["--hidden", "7"], "hidden size of at least 8"),
    ("receipts.py", ["--receipt-batch", "17"], "--receipt-batch must be from 1 to 16"),
    ("receipts.py", ["--rounds", "0"], "must be at least 1"),
    ("receipts.py", ["--hidden", "7"], "hidden size of at least 8"),
])
def test_benchmarks_refuse_bad_arguments_in_one_line(script, args, message):
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args], capture_output=True, text=True,
                         timeout=120, cwd=ROOT)
    assert out.returncode == 2 and message in out.stderr and "Traceback" not in out.stderr
