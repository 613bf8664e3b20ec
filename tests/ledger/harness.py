"""Test harness for the ledger: real `corolla ledger serve` processes, a throw-away
PostgreSQL cluster, a signing HTTP client, and builders for real signed receipts.

Also used by benchmarks/ledger.py.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from protocol.identity import Identity
from protocol.manifests import ModelManifest
from protocol.receipts import ZERO32, Kind, Receipt, SignedReceipt
from protocol.request_auth import sign_request

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def small_manifest(name: str = "tiny-llama", blocks: int = 4, flops: int = 2_000_000) -> ModelManifest:
    return ModelManifest(
        arch="llama", config={"hidden_size": 64, "num_hidden_layers": blocks}, num_blocks=blocks,
        hidden_size=64, block_hashes=tuple(os.urandom(32).hex() for _ in range(blocks)),
        block_flops_per_token=flops, name=name,
    )


def make_receipt(
    node: Identity, client: Identity, manifest: ModelManifest, *, step: int = 0, tokens: int = 8,
    blocks: tuple[int, int] = (0, 2), ticket_id: bytes = ZERO32, price: int = 0, ack: bool = True,
    session_id: bytes | None = None, timestamp_ms: int | None = None,
) -> SignedReceipt:
    receipt = Receipt(
        node_key=node.public_key, client_key=client.public_key, model=manifest.manifest_hash(),
        block_start=blocks[0], block_end=blocks[1], kind=Kind.INFERENCE,
        session_id=session_id or os.urandom(16), step=step, batch=1, tokens=tokens,
        input_hash=os.urandom(32), output_hash=os.urandom(32), blocks_root=os.urandom(32),
        request_ref=os.urandom(32), timestamp_ms=timestamp_ms or int(time.time() * 1000),
        ticket_id=ticket_id, price=price,
    )
    signed = receipt.sign(node)
    return signed.countersign(client) if ack else signed


class SignedClient:
    """httpx client that signs write requests with an Identity (protocol.request_auth)."""

    def __init__(self, base_url: str, identity: Identity, timeout: float = 60.0):
        self.identity = identity
        self.http = httpx.Client(base_url=base_url, timeout=timeout)

    def post(self, path: str, body: Any, headers: dict[str, str] | None = None) -> httpx.Response:
        raw = json.dumps(body).encode()
        signed = sign_request(self.identity, "POST", path, raw)
        return self.http.post(path, content=raw, headers={"content-type": "application/json", **signed,
                                                          **(headers or {})})

    def get(self, path: str, **params: Any) -> httpx.Response:
        return self.http.get(path, params=params or None)

    def close(self) -> None:
        self.http.close()


@dataclass
class LedgerProcess:
    """One `corolla ledger serve` subprocess on 127.0.0.1."""

    db_url: str
    workdir: Path
    args: list[str] = field(default_factory=list)
    admin: Identity = field(default_factory=Identity.generate)
    verifier: Identity = field(default_factory=Identity.generate)
    proc: subprocess.Popen | None = None
    url: str = ""
    ledger_key: str = ""
    port: int = 0

    def start(self, timeout: float = 30.0) -> LedgerProcess:
        self.workdir.mkdir(parents=True, exist_ok=True)
        ready = self.workdir / "ready.json"
        ready.unlink(missing_ok=True)
        self.port = self.port or free_port()
        cmd = [
            sys.executable, "-m", "cli.main", "ledger", "serve", "--db", self.db_url, "--port", str(self.port),
            "--key", str(self.workdir / "ledger.key"), "--ready-file", str(ready), "--epoch-minutes", "0",
            "--admin", self.admin.public_hex, "--verifier", self.verifier.public_hex, "--log-level", "warning",
            *self.args,
        ]
        log = open(self.workdir / "server.log", "ab")
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.time() + timeout
        while not ready.exists():
            if self.proc.poll() is not None:
                raise RuntimeError(f"ledger exited: {(self.workdir / 'server.log').read_text()[-2000:]}")
            if time.time() > deadline:
                self.stop()
                raise TimeoutError("ledger did not become ready")
            time.sleep(0.05)
        info = json.loads(ready.read_text())
        self.url, self.ledger_key = info["url"], info["ledger_key"]
        return self

    def client(self, identity: Identity | None = None) -> SignedClient:
        return SignedClient(self.url, identity or Identity.generate())

    def kill(self) -> None:
        """kill -9: no shutdown handlers run."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()

    def close_epoch(self) -> dict[str, Any]:
        client = self.client(self.admin)
        try:
            response = client.post("/v1/epochs/close", {})
            response.raise_for_status()
            return response.json()  # type: ignore[no-any-return]
        finally:
            client.close()


def pg_bin() -> Path | None:
    for version in ("17", "16", "15", "14", "13"):
        path = Path(f"/usr/lib/postgresql/{version}/bin")
        if (path / "initdb").exists():
            return path
    return None


class PostgresCluster:
    """A private throw-away PostgreSQL cluster (initdb as `postgres`, pg_ctl on a free port)."""

    def __init__(self) -> None:
        binaries = pg_bin()
        if binaries is None:
            raise FileNotFoundError("PostgreSQL binaries not found under /usr/lib/postgresql/*/bin")
        self.bin = binaries
        # Not under pytest's tmp dirs: those are 0700 and the server runs as `postgres`.
        self.base = Path(tempfile.mkdtemp(prefix="corolla-pg-"))
        self.dir = self.base / "pgdata"
        self.port = free_port()
        self._counter = 0

    def _as_postgres(self, *cmd: str) -> None:
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        subprocess.run([*prefix, *cmd], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def start(self) -> PostgresCluster:
        os.chmod(self.base, 0o755)
        self.dir.mkdir()
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres", "postgres")
        self._as_postgres(str(self.bin / "initdb"), "-D", str(self.dir), "-A", "trust", "-U", "postgres")
        self._as_postgres(
            str(self.bin / "pg_ctl"), "-D", str(self.dir), "-l", str(self.dir / "log"), "-w", "-o",
            f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200",
            "start",
        )
        return self

    def url(self, db: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{db}"

    def new_database(self) -> str:
        import psycopg

        self._counter += 1
        name = f"ledger{self._counter}_{os.getpid()}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def stop(self) -> None:
        try:
            self._as_postgres(str(self.bin / "pg_ctl"), "-D", str(self.dir), "-m", "immediate", "stop")
        finally:
            shutil.rmtree(self.base, ignore_errors=True)
