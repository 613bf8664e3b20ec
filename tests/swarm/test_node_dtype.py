"""`corolla node --dtype bfloat16`: the node computes in bfloat16 and says so on the DHT."""

from __future__ import annotations

import time

import torch

from client.remote_calls import call_span
from client.swarm_connection import SwarmConnection
from models.manifest_builder import load_manifest
from models.span import BlockSpan
from protocol.messages import RequestMeta
from tests.swarm.conftest import start_node


def test_bfloat16_node_matches_a_local_bfloat16_span_and_announces_its_dtype(dht_peer, make_small_model, workdir):
    model = make_small_model("llama", seed=7)  # own seed = own swarm
    manifest_hash = load_manifest(model).manifest_hash()
    node = start_node(model, "0:4", dht_peer, workdir, "bf16", "--dtype", "bfloat16").wait()
    conn = SwarmConnection(dht_peer)
    try:
        deadline, ann = time.monotonic() + 30, None
        while ann is None and time.monotonic() < deadline:
            ann = next((a for a in conn.run(conn.announcements(manifest_hash)) if a.peer_id == node.peer_id), None)
            time.sleep(0 if ann else 0.2)
        assert ann is not None, "the bfloat16 node is not announced"
        assert ann.dtype == "bfloat16" and ann.online

        hidden = torch.randn(2, 7, 64, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
        result = conn.run(call_span(conn, ann, "forward", RequestMeta(manifest_hash, 0, 4), [hidden], 60.0))
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # as the node (--torch-threads 1), so the same kernels run
        try:
            expected = BlockSpan.load(model, 0, 4, dtype=torch.bfloat16).forward(hidden)
        finally:
            torch.set_num_threads(threads)
        assert result.output.dtype == torch.bfloat16
        # the same ops on the same kind of CPU: bit-identical, not merely close
        assert torch.equal(result.output, expected)
        fp32 = BlockSpan.load(model, 0, 4).forward(hidden.float())
        assert not torch.equal(result.output.float(), fp32)  # it really computed in bfloat16
        torch.testing.assert_close(result.output.float(), fp32, atol=0.1, rtol=0.05)
    finally:
        conn.close()
        node.stop()
