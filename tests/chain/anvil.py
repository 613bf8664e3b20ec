"""A real anvil on 127.0.0.1 for tests, from node_modules/.bin (npm ci installs it)."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from ledger.chain_cli import ANVIL_DEV_KEYS

ROOT = Path(__file__).resolve().parents[2]
ANVIL = ROOT / "node_modules" / ".bin" / "anvil"
FORGE = ROOT / "node_modules" / ".bin" / "forge"
DEV_KEYS = ANVIL_DEV_KEYS  # anvil's public dev accounts, funded on anvil only


def require(tool: Path, name: str) -> None:
    """Skip the calling test when `tool` is missing, or fail it when COROLLA_REQUIRE_CHAIN=1
    (scripts/test sets it, so the test command cannot pass by skipping the chain)."""
    if tool.exists():
        return
    message = f"{name} is absent: run `npm ci` (scripts/setup does)"
    if os.environ.get("COROLLA_REQUIRE_CHAIN") == "1":
        pytest.fail(f"{message}; COROLLA_REQUIRE_CHAIN=1 requires the chain tests to run", pytrace=False)
    pytest.skip(message)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Anvil:
    """One anvil process; `url` is its JSON-RPC endpoint."""

    def __init__(self, args: list[str] | None = None) -> None:
        self.args = list(args or [])  # extra anvil flags, e.g. ["--dump-state", PATH]
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 20.0) -> Anvil:
        self.proc = subprocess.Popen(
            [str(ANVIL), "--host", "127.0.0.1", "--port", str(self.port), "--silent", *self.args],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                r = httpx.post(self.url, json={"jsonrpc": "2.0", "id": 1, "method": "eth_chainId", "params": []})
                if r.status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            if self.proc.poll() is not None:
                raise RuntimeError(f"anvil exited with {self.proc.returncode}")
            time.sleep(0.05)
        self.stop()
        raise RuntimeError("anvil did not answer in time")

    def rpc(self, method: str, *params: object) -> object:
        return httpx.post(self.url, json={"jsonrpc": "2.0", "id": 1, "method": method, "params": list(params)}).json()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
