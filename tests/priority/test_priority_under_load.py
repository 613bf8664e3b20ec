"""A paying client is served first on a node saturated by free clients, who still finish.

Runs benchmarks/priority.py at a small size as real processes on loopback (DHT peer,
ledger granting credits, one node with the priority pool, a worker process of free
clients) and checks the behaviour, not a speed target: with a ticket the client's
latency under load is far below the same client's without one, and no free client
starves.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_paying_client_is_served_first_and_free_clients_still_complete():
    cmd = [sys.executable, str(ROOT / "benchmarks" / "priority.py"), "--free-clients", "8", "--tokens", "60",
           "--free-tokens", "400", "--layers", "4", "--hidden", "256", "--free-timeout", "240", "--json"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=420, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["load_active_during_measurement"], "free clients stopped before the paid phase ended"
    assert result["free_errors"] == []
    assert result["free_clients_completed"] == 8
    assert result["free_tokens_per_s"] > 0
    # the ticket buys priority: loaded paid latency is well below loaded unpaid latency
    assert result["paying_latency_ratio"] * 1.5 < result["free_latency_ratio"], result
