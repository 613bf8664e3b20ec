"""Swarm fixtures: a real `corolla dht` process, real `corolla node` processes, in-process nodes.

Expensive set-up is session-scoped: one DHT bootstrap peer for everything, one small model
per architecture, swarms started once and reused. Every process binds 127.0.0.1 and is
stopped at the end of the session.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
PYTHON = sys.executable


def wait_for_file(path: Path, proc: subprocess.Popen | None = None, timeout: float = 120.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            return json.loads(path.read_text())
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {path} appeared")
        time.sleep(0.1)
    raise TimeoutError(f"{path} did not appear within {timeout} s")


@dataclass
class NodeProcess:
    proc: subprocess.Popen
    ready_file: Path
    log: Path
    ready: dict[str, Any] = field(default_factory=dict)

    def wait(self, timeout: float = 180.0) -> NodeProcess:
        try:
            self.ready = wait_for_file(self.ready_file, self.proc, timeout)
        except Exception as exc:
            raise RuntimeError(f"{exc}; log:\n{self.log.read_text()[-3000:]}") from None
        return self

    @property
    def peer_id(self) -> str:
        return self.ready["peer_id"]

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def corolla_process(args: list[str], workdir: Path, name: str) -> NodeProcess:
    ready = workdir / f"{name}.ready.json"
    log = workdir / f"{name}.log"
    ready.unlink(missing_ok=True)
    with open(log, "wb") as out:
        proc = subprocess.Popen([PYTHON, "-m", "cli.main", *args, "--ready-file", str(ready)], cwd=ROOT,
                                stdout=out, stderr=subprocess.STDOUT)
    return NodeProcess(proc, ready, log)


def start_node(model: Path, blocks: str, peers: list[str], workdir: Path, name: str, *extra: str) -> NodeProcess:
    return corolla_process(["node", str(model), "--blocks", blocks, "--initial-peers", *peers, *extra],
                           workdir, name)


class InProcessNode:
    """A node served from a thread of the test process (same code path as `corolla node`)."""

    def __init__(self, argv: list[str]):
        from node.cli import parse_args

        self.cfg = parse_args(argv)
        self.ready: dict[str, Any] = {}
        self._ready_evt = threading.Event()
        self._error: BaseException | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.stop_evt: asyncio.Event | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        from node.cli import serve

        async def main() -> None:
            self.loop = asyncio.get_running_loop()
            self.stop_evt = asyncio.Event()
            await serve(self.cfg, self.stop_evt, self._on_ready)

        try:
            asyncio.run(main())
        except BaseException as exc:  # surfaced by wait()
            self._error = exc
            self._ready_evt.set()

    def _on_ready(self, ready: dict[str, Any]) -> None:
        self.ready = ready
        self._ready_evt.set()

    def wait(self, timeout: float = 120.0) -> InProcessNode:
        if not self._ready_evt.wait(timeout) or self._error is not None:
            raise RuntimeError(f"in-process node failed to start: {self._error!r}")
        return self

    @property
    def peer_id(self) -> str:
        return self.ready["peer_id"]

    def stop(self) -> None:
        if self.loop is not None and self.stop_evt is not None and self.thread.is_alive():
            self.loop.call_soon_threadsafe(self.stop_evt.set)
            self.thread.join(30)


@pytest.fixture(scope="session")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("swarm")


@pytest.fixture(scope="session")
def dht_peer(workdir: Path):
    proc = corolla_process(["dht"], workdir, "dht")
    proc.wait(60)
    yield proc.ready["maddrs"]
    proc.stop()


_model_lock = threading.Lock()


@pytest.fixture(scope="session")
def make_small_model(workdir: Path):
    """make(arch, seed=0, layers=4) -> model dir (cached per session)."""
    made: dict[tuple[str, int, int], Path] = {}

    def make(arch: str, seed: int = 0, layers: int = 4, hidden: int = 64) -> Path:
        from models.make_model import make_model

        key = (arch, seed, layers)
        with _model_lock:
            if key not in made:
                made[key] = make_model(arch, workdir / f"{arch}-s{seed}-l{layers}", layers=layers, hidden=hidden,
                                       seed=seed)
        return made[key]

    return make


@dataclass
class Swarm:
    model: Path
    peers: list[str]
    nodes: list[Any]


@pytest.fixture(scope="session")
def llama_swarm(dht_peer: list[str], make_small_model, workdir: Path):
    """Real processes: A serves 0:2 (small limits for the bad-input tests), B and C both serve 2:4."""
    model = make_small_model("llama")
    nodes = [
        start_node(model, "0:2", dht_peer, workdir, "llama-a", "--max-payload-mb", "1", "--max-cache-tokens",
                   "1024", "--max-session-length", "128"),
        start_node(model, "2:4", dht_peer, workdir, "llama-b"),
        start_node(model, "2:4", dht_peer, workdir, "llama-c"),
    ]
    try:
        for node in nodes:
            node.wait()
        yield Swarm(model, dht_peer, nodes)
    finally:
        for node in nodes:
            node.stop()


def in_process_swarm(model: Path, spans: list[str], peers: list[str]) -> list[InProcessNode]:
    nodes = [InProcessNode([str(model), "--blocks", span, "--initial-peers", *peers]) for span in spans]
    for node in nodes:
        node.wait()
    return nodes


@pytest.fixture(scope="session")
def reference_model():
    """load(model_dir) -> the same model run locally by transformers (cached)."""
    from transformers import AutoModelForCausalLM

    cache: dict[Path, Any] = {}

    def load(model_dir: Path) -> Any:
        if model_dir not in cache:
            cache[model_dir] = AutoModelForCausalLM.from_pretrained(model_dir, dtype="float32").eval()
        return cache[model_dir]

    return load


@pytest.fixture(scope="session")
def llama_client(llama_swarm: Swarm):
    from client import AutoDistributedModelForCausalLM

    model = AutoDistributedModelForCausalLM.from_pretrained(str(llama_swarm.model), initial_peers=llama_swarm.peers)
    yield model
    model.close()


os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
