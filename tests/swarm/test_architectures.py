"""Every supported architecture, split over two in-process nodes, matches local transformers."""

from __future__ import annotations

import pytest
import torch

from tests.swarm.conftest import in_process_swarm

ARCHS = ["mistral", "qwen2", "bloom", "falcon"]  # llama: test_llama_swarm.py (real processes)


@pytest.fixture(scope="module", params=ARCHS)
def arch_swarm(request, dht_peer, make_small_model):
    from client import AutoDistributedModelForCausalLM

    model = make_small_model(request.param)
    nodes = in_process_swarm(model, ["0:2", "2:4"], dht_peer)
    client = AutoDistributedModelForCausalLM.from_pretrained(str(model), initial_peers=dht_peer)
    try:
        yield model, client
    finally:
        client.close()
        for node in nodes:
            node.stop()


def test_architecture_matches_transformers(arch_swarm, reference_model):
    model, client = arch_swarm
    ref = reference_model(model)
    ids = torch.randint(3, 500, (2, 9), generator=torch.Generator().manual_seed(0))

    with torch.no_grad():  # full forward
        torch.testing.assert_close(client(ids).logits, ref(ids).logits, atol=1e-5, rtol=1e-5)

    ours = client.generate(ids[:1], max_new_tokens=20, min_new_tokens=20, do_sample=False)
    theirs = ref.generate(ids[:1], max_new_tokens=20, min_new_tokens=20, do_sample=False)
    assert ours.tolist() == theirs.tolist()

    with torch.no_grad(), client.inference_session(max_length=9):  # incremental == full
        steps = [client(ids[:, :4]).logits] + [client(ids[:, : t + 1]).logits for t in range(4, 9)]
        torch.testing.assert_close(torch.cat(steps, 1), ref(ids).logits, atol=1e-5, rtol=1e-5)

    emb = client.get_input_embeddings()(ids).detach().requires_grad_(True)
    client(inputs_embeds=emb).logits.float().log_softmax(-1)[..., 5].sum().backward()
    emb_ref = ref.get_input_embeddings()(ids).detach().requires_grad_(True)
    ref(inputs_embeds=emb_ref).logits.log_softmax(-1)[..., 5].sum().backward()
    torch.testing.assert_close(emb.grad, emb_ref.grad, atol=1e-6, rtol=1e-4)
