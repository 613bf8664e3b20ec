"""Chains of one and three nodes (in-process) give the same tokens as transformers."""

from __future__ import annotations

import pytest
import torch

from tests.swarm.conftest import in_process_swarm


@pytest.mark.parametrize(("seed", "spans"), [(1, ["0:4"]), (2, ["0:1", "1:3", "3:4"])], ids=["1-node", "3-nodes"])
def test_chain_generates_like_transformers(seed, spans, dht_peer, make_small_model, reference_model):
    from client import AutoDistributedModelForCausalLM

    model = make_small_model("llama", seed=seed)  # own seed = own manifest = own swarm
    nodes = in_process_swarm(model, spans, dht_peer)
    client = AutoDistributedModelForCausalLM.from_pretrained(str(model), initial_peers=dht_peer)
    try:
        ids = torch.randint(4, 500, (2, 6), generator=torch.Generator().manual_seed(seed))
        ref = reference_model(model)
        ours = client.generate(ids, max_new_tokens=20, min_new_tokens=20, do_sample=False)
        assert ours.tolist() == ref.generate(ids, max_new_tokens=20, min_new_tokens=20, do_sample=False).tolist()
        with client.inference_session(max_length=8) as session:
            client.generate(ids[:1], max_new_tokens=2, do_sample=False)
            assert [s.ann.peer_id for s in session.spans] == [n.peer_id for n in nodes]
    finally:
        client.close()
        for node in nodes:
            node.stop()
