"""A real anvil on 127.0.0.1 for tests, from node_modules/.bin (npm ci installs it)."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

import httpx

from ledger.chain_cli import ANVIL_DEV_KEYS

ROOT = Path(__file__).resolve().parents[2]
ANVIL = ROOT / "node_modules" / ".bin" / "anvil"
FORGE = ROOT / "node_modules" / ".bin" / "forge"
DEV_KEYS = ANVIL_DEV_KEYS  # anvil's public dev accounts, funded on anvil only


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Anvil:
    """One anvil process; `url` is its JSON-RPC endpoint."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 20.0) -> Anvil:
        self.proc = subprocess.Popen(
            [str(ANVIL), "--host", "127.0.0.1", "--port", str(self.port), "--silent"],
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
