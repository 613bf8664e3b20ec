"""`corolla chain devnet`: the one-machine chain the demo starts."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from ledger.chain import Chain, Deployment, Settlement, connect, load_evm_key
from tests.chain.anvil import ANVIL, ROOT, require


def test_devnet_deploys_serves_and_stops_cleanly(built_contracts: None, tmp_path: Path) -> None:
    require(ANVIL, "anvil")
    ready = tmp_path / "ready.json"
    proc = subprocess.Popen([sys.executable, "-m", "cli.main", "chain", "devnet", "--dir", str(tmp_path / "dev"),
                             "--ready-file", str(ready)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert proc.poll() is None, proc.communicate()[1]
            assert time.monotonic() < deadline, "devnet did not become ready"
            time.sleep(0.1)
        info = json.loads(ready.read_text())
        d = Deployment.load(info["deployment"])
        poster = Chain(connect(info["rpc"]), load_evm_key(info["keys"]["poster"]))
        Settlement(poster, d).post_root(1, b"\x07" * 32, 5)  # the poster key is the one deployed
        assert Settlement(poster, d).latest_epoch() == 1
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
    assert proc.returncode == 0
    with pytest.raises(httpx.TransportError):  # anvil went with it
        httpx.post(info["rpc"], json={"jsonrpc": "2.0", "id": 1, "method": "eth_chainId", "params": []}, timeout=2)
