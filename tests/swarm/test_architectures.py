"""Every supported architecture, split over two in-process nodes, matches local transformers."""

from __future__ import annotations

import pytest
import torch

from models import SUPPORTED_ARCHS
from tests.swarm.conftest import in_process_swarm

ARCHS = [arch for arch in SUPPORTED_ARCHS if arch != "llama"]  # llama: test_llama_swarm.py (real processes)


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


def final_norm(model) -> torch.nn.Module:
    """The norm after the last block of a transformers causal LM (Llama family: norm; BLOOM, Falcon: ln_f)."""
    base = model.base_model
    return base.norm if hasattr(base, "norm") else base.ln_f


def test_architecture_matches_transformers(arch_swarm, reference_model):
    model, client = arch_swarm
    ref = reference_model(model)
    ids = torch.randint(4, 500, (2, 9), generator=torch.Generator().manual_seed(0))

    with torch.no_grad():  # full forward
        torch.testing.assert_close(client(ids).logits, ref(ids).logits, atol=1e-5, rtol=1e-5)

    ours = client.generate(ids[:1], max_new_tokens=20, min_new_tokens=20, do_sample=False)
    theirs = ref.generate(ids[:1], max_new_tokens=20, min_new_tokens=20, do_sample=False)
    assert ours.shape[1] == 9 + 20
    assert ours.tolist() == theirs.tolist()

    with torch.no_grad(), client.inference_session(max_length=9):  # incremental == full
        steps = [client(ids[:, :4]).logits] + [client(ids[:, : t + 1]).logits for t in range(4, 9)]
        torch.testing.assert_close(torch.cat(steps, 1), ref(ids).logits, atol=1e-5, rtol=1e-5)

    # gradients w.r.t. the input embeddings and the local parameters (embeddings, final norm, head)
    client.zero_grad()
    ref.zero_grad()
    emb = client.get_input_embeddings()(ids)
    emb.retain_grad()
    client(inputs_embeds=emb).logits.float().log_softmax(-1)[..., 5].sum().backward()
    emb_ref = ref.get_input_embeddings()(ids)
    emb_ref.retain_grad()
    ref(inputs_embeds=emb_ref).logits.log_softmax(-1)[..., 5].sum().backward()
    # transformers sums Mixtral's expert outputs in another order in the backward pass
    # (see tests/models/test_span_matches_transformers.py)
    rtol = 1e-3 if model.name.startswith("mixtral") else 1e-4
    torch.testing.assert_close(emb.grad, emb_ref.grad, atol=1e-6, rtol=rtol)
    params = {
        "embedding": (client.get_input_embeddings().weight, ref.get_input_embeddings().weight),
        "final norm": (client.parts.norm.weight, final_norm(ref).weight),
        "lm head": (client.get_output_embeddings().weight, ref.get_output_embeddings().weight),
    }
    for name, (ours_p, theirs_p) in params.items():
        assert ours_p.grad is not None and ours_p.grad.abs().sum() > 0, name
        torch.testing.assert_close(
            ours_p.grad, theirs_p.grad, atol=1e-6, rtol=rtol, msg=lambda m, n=name: f"{n}: {m}"
        )
