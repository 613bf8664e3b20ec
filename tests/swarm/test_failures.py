"""Nodes leaving: a clean shutdown withdraws the announcement; a killed node is routed around."""

from __future__ import annotations

import signal

import pytest
import torch
from transformers import StoppingCriteria

from client.swarm_connection import SwarmConnection
from models.manifest_builder import load_manifest
from tests.swarm.conftest import start_node


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_shutdown_signal_withdraws_the_dht_announcement(sig, dht_peer, make_small_model, workdir):
    model = make_small_model("llama", seed=3)
    manifest_hash = load_manifest(model).manifest_hash()
    name = f"withdraw-{sig.name}"
    node = start_node(model, "0:4", dht_peer, workdir, name, "--key", str(workdir / f"{name}.key")).wait()
    conn = SwarmConnection(dht_peer)
    try:
        before = {a.peer_id: a for a in conn.run(conn.announcements(manifest_hash))}
        assert before[node.peer_id].state == "online" and (before[node.peer_id].start, before[node.peer_id].end) == (0, 4)
        assert before[node.peer_id].throughput > 0
        assert before[node.peer_id].node_key == node.ready["node_key"] and len(node.ready["node_key"]) == 64
        assert node.stop(sig) == 0
        after = {a.peer_id: a for a in conn.run(conn.announcements(manifest_hash))}
        assert after[node.peer_id].state == "offline"
    finally:
        node.stop(signal.SIGKILL)
        conn.close()


class KillServerOfBlocks(StoppingCriteria):
    """Kills (SIGKILL) the node serving the session's last span once `at` tokens exist."""

    def __init__(self, session, nodes, at: int):
        self.session, self.nodes, self.at, self.killed = session, nodes, at, None

    def __call__(self, input_ids, scores, **kwargs):
        if self.killed is None and input_ids.shape[1] >= self.at:
            victim = self.session.spans[-1].ann.peer_id
            node = next(n for n in self.nodes if n.peer_id == victim)
            node.stop(signal.SIGKILL)
            self.killed = victim
        return torch.zeros(input_ids.shape[0], dtype=torch.bool)


def test_node_killed_mid_generation_is_replaced_with_identical_output(llama_swarm, llama_client, reference_model):
    ref = reference_model(llama_swarm.model)
    ids = torch.randint(4, 500, (1, 6), generator=torch.Generator().manual_seed(21))
    with llama_client.inference_session(max_length=40) as session:
        killer = KillServerOfBlocks(session, llama_swarm.nodes, at=14)
        ours = llama_client.generate(ids, max_new_tokens=24, min_new_tokens=24, do_sample=False,
                                     stopping_criteria=[killer])
        assert killer.killed is not None
        assert session.spans[-1].ann.peer_id != killer.killed  # re-routed to the other 2:4 node
    theirs = ref.generate(ids, max_new_tokens=24, min_new_tokens=24, do_sample=False)
    assert ours.tolist() == theirs.tolist()
    assert llama_client.swarm.router.banned_until.get(killer.killed)
