"""Fixtures for priority tests: a real ledger process on 127.0.0.1 with funded test keys."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from protocol.identity import Identity
from protocol.manifests import ModelManifest
from protocol.request_auth import sign_request

REPO = Path(__file__).resolve().parents[2]
GRANT = 1_000


@dataclass
class LedgerProc:
    url: str
    key: bytes
    admin: Identity
    rich: list[Identity]  # each granted GRANT credits at start
    manifest: ModelManifest
    proc: subprocess.Popen[bytes]

    def post(self, identity: Identity, path: str, body: object) -> httpx.Response:
        data = json.dumps(body).encode()
        headers = sign_request(identity, "POST", path, data) | {"Content-Type": "application/json"}
        return httpx.post(self.url + path, content=data, headers=headers, timeout=10)

    def get(self, path: str) -> object:
        resp = httpx.get(self.url + path, timeout=10)
        resp.raise_for_status()
        return resp.json()

    def close_epoch(self) -> dict:
        resp = self.post(self.admin, "/v1/epochs/close", {})
        assert resp.status_code == 200, resp.text
        return resp.json()

    def account(self, identity: Identity) -> dict:
        return self.get(f"/v1/accounts/{identity.public_hex}")  # type: ignore[return-value]


def tiny_manifest() -> ModelManifest:
    return ModelManifest(arch="llama", config={"hidden_size": 64, "num_hidden_layers": 2}, num_blocks=2,
                         hidden_size=64, block_hashes=("00" * 32, "11" * 32), block_flops_per_token=2_000_000,
                         name="priority-test")


def start_ledger(tmp: Path, grants: list[Identity], admin: Identity, extra: list[str] | None = None
                 ) -> subprocess.Popen[bytes]:
    ready = tmp / "ledger.ready"
    args = [sys.executable, "-m", "cli.main", "ledger", "serve", "--db", f"sqlite:///{tmp / 'ledger.db'}",
            "--port", "0", "--key", str(tmp / "ledger.key"), "--ready-file", str(ready),
            "--epoch-minutes", "0", "--grace-s", "0", "--admin", admin.public_hex, "--log-level", "warning"]
    for g in grants:
        args += ["--grant", f"{g.public_hex}:{GRANT}"]
    proc = subprocess.Popen(args + (extra or []), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    deadline = time.monotonic() + 60
    while not ready.exists():
        if proc.poll() is not None:
            raise RuntimeError(f"ledger exited: {proc.stderr.read().decode()[-2000:] if proc.stderr else ''}")
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("ledger did not become ready in 60 s")
        time.sleep(0.05)
    return proc


@pytest.fixture(scope="session")
def ledger(tmp_path_factory) -> Iterator[LedgerProc]:
    tmp = tmp_path_factory.mktemp("priority-ledger")
    admin = Identity.generate()
    rich = [Identity.generate() for _ in range(8)]
    proc = start_ledger(tmp, rich, admin)
    info = json.loads((tmp / "ledger.ready").read_text())
    lp = LedgerProc(info["url"], bytes.fromhex(info["ledger_key"]), admin, rich, tiny_manifest(), proc)
    resp = lp.post(admin, "/v1/manifests", lp.manifest.to_json())
    assert resp.status_code == 200, resp.text
    try:
        yield lp
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
