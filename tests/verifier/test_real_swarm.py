"""The verifier against the real swarm: `corolla dht`, real node servers with keys shipping
receipts to a real ledger, a real client generating; the honest node passes every check
and a node serving int8 weights while announcing float32 fails every one."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from protocol.identity import Identity
from protocol.receipts import Kind
from protocol.verdicts import Reason, Result
from tests.ledger.harness import LedgerProcess
from verifier.challenger import Challenger
from verifier.ledger_client import LedgerClient
from verifier.service import ServiceConfig, Verifier
from verifier.state import VerifierState

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def real_swarm(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    from client import AutoDistributedModelForCausalLM
    from models.manifest_builder import load_manifest
    from models.span import BlockSpan
    from tests.swarm.conftest import InProcessNode, corolla_process

    tmp = tmp_path_factory.mktemp("verifier-real-swarm")
    ledger = LedgerProcess(f"sqlite:///{tmp / 'ledger.db'}", tmp, args=["--grace-s", "3600"]).start()
    poster = ledger.client(Identity.generate())
    assert poster.post("/v1/manifests", load_manifest(model_dir).to_json()).status_code == 200
    poster.close()
    dht = corolla_process(["dht"], tmp, "dht").wait(60)
    peers = dht.ready["maddrs"]

    def node(span: str, name: str) -> InProcessNode:
        return InProcessNode(
            [
                str(model_dir),
                "--blocks",
                span,
                "--initial-peers",
                *peers,
                "--key",
                str(tmp / f"{name}.key"),
                "--ledger",
                ledger.url,
            ]
        ).wait()

    honest = node("0:2", "honest")
    real_load = BlockSpan.load.__func__  # type: ignore[attr-defined]

    def int8_load(cls, *args, **kw):  # type: ignore[no-untyped-def]
        return real_load(cls, *args, **{**kw, "quantize": "int8"})

    BlockSpan.load = classmethod(int8_load)  # type: ignore[method-assign]  # the cheater loads int8 weights...
    try:
        cheater = node("2:4", "cheater")  # ...and announces float32 like everyone else
    finally:
        BlockSpan.load = classmethod(real_load)  # type: ignore[method-assign]
    client = AutoDistributedModelForCausalLM.from_pretrained(
        str(model_dir), initial_peers=peers, key=str(tmp / "client.key")
    )
    ids = torch.randint(4, 500, (1, 6), generator=torch.Generator().manual_seed(0))
    client.generate(ids, max_new_tokens=4, min_new_tokens=4, do_sample=False)
    expected = 2 * 4  # 4 inference steps x 2 nodes
    reader = LedgerClient(ledger.url)
    deadline = time.monotonic() + 60
    while len(reader.due(rate=1.0, limit=100)) < expected and time.monotonic() < deadline:
        time.sleep(0.5)
    yield {
        "ledger": ledger,
        "peers": peers,
        "honest": honest,
        "cheater": cheater,
        "reader": reader,
        "model": model_dir,
        "tmp": tmp,
        "expected": expected,
    }
    reader.close()
    client.close()
    for n in (honest, cheater):
        n.stop()
    dht.stop()
    ledger.stop()


def test_real_nodes_honest_passes_and_int8_cheater_fails(real_swarm: dict) -> None:
    ledger: LedgerProcess = real_swarm["ledger"]
    due = real_swarm["reader"].due(rate=1.0, limit=100)
    assert len(due) >= real_swarm["expected"]
    config = ServiceConfig(
        ledger=ledger.url,
        model=str(real_swarm["model"]),
        key_file="",
        sample_rate=1.0,
        challenge_timeout_s=10.0,
        session_quiet_s=0.0,  # the generation is over: its sessions are checked at once
    )
    verifier = Verifier(
        config,
        ledger.verifier,
        LedgerClient(ledger.url, ledger.verifier),
        Challenger(real_swarm["peers"], timeout_s=10.0),
        VerifierState(real_swarm["tmp"] / "v.sqlite"),
    )
    try:
        assert verifier.poll_once() == len(due)
    finally:
        verifier.challenger.close()  # type: ignore[union-attr]
        verifier.state.close()
    keys = {
        real_swarm["honest"].ready["node_key"]: "honest",
        real_swarm["cheater"].ready["node_key"]: "cheater",
    }
    seen = {"honest": 0, "cheater": 0}
    for item in due:
        assert item["kind"] == int(Kind.INFERENCE)
        (v,) = real_swarm["reader"]._get("/v1/verdicts", receipt=item["id"])
        who = keys[item["node_key"]]
        seen[who] += 1
        if who == "honest":
            assert (v["result"], v["reason"]) == (int(Result.PASS), int(Reason.NONE)), v
        else:
            assert (v["result"], v["reason"]) == (int(Result.FAIL), int(Reason.OUTPUT_MISMATCH)), v
    assert seen["honest"] >= 4 and seen["cheater"] >= 4
