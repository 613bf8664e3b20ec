"""A Llama model served by real `corolla node` processes matches local transformers."""

from __future__ import annotations

import pytest
import torch

from client.inference_session import SessionLengthError


def prompt(batch: int, length: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(4, 500, (batch, length), generator=torch.Generator().manual_seed(seed))  # 3 is the pad id


def test_forward_logits_match_transformers_through_two_nodes(llama_swarm, llama_client, reference_model):
    ref = reference_model(llama_swarm.model)
    ids = prompt(2, 11)
    with torch.no_grad():
        ours, theirs = llama_client(ids).logits, ref(ids).logits
    assert ours.shape == theirs.shape == (2, 11, ref.config.vocab_size)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


def test_greedy_generate_matches_transformers(llama_swarm, llama_client, reference_model):
    ref = reference_model(llama_swarm.model)
    for length in (1, 5, 13):  # prompts of different lengths
        ids = prompt(1, length, seed=length)
        ours = llama_client.generate(ids, max_new_tokens=24, min_new_tokens=24, do_sample=False)
        theirs = ref.generate(ids, max_new_tokens=24, min_new_tokens=24, do_sample=False)
        assert ours.shape[1] == length + 24
        assert ours.tolist() == theirs.tolist()


def test_sampling_generate_matches_transformers_with_same_seed(llama_swarm, llama_client, reference_model):
    ref = reference_model(llama_swarm.model)
    ids = prompt(1, 6, seed=3)
    torch.manual_seed(7)
    ours = llama_client.generate(ids, max_new_tokens=20, do_sample=True, temperature=0.9, top_k=40)
    torch.manual_seed(7)
    theirs = ref.generate(ids, max_new_tokens=20, do_sample=True, temperature=0.9, top_k=40)
    assert ours.tolist() == theirs.tolist()


def test_batched_generate_matches_transformers(llama_swarm, llama_client, reference_model):
    ref = reference_model(llama_swarm.model)
    ids = prompt(3, 7, seed=11)
    ours = llama_client.generate(ids, max_new_tokens=20, min_new_tokens=20, do_sample=False)
    theirs = ref.generate(ids, max_new_tokens=20, min_new_tokens=20, do_sample=False)
    assert ours.tolist() == theirs.tolist()


def test_incremental_decoding_equals_full_forward(llama_swarm, llama_client):
    ids = prompt(2, 12, seed=5)
    with torch.no_grad():
        full = llama_client(ids).logits
        with llama_client.inference_session(max_length=12) as session:
            chunks = [llama_client(ids[:, :5]).logits]
            for t in range(5, 12):
                chunks.append(llama_client(ids[:, : t + 1]).logits)
            assert session.position == 12
    torch.testing.assert_close(torch.cat(chunks, dim=1), full, atol=1e-5, rtol=1e-5)


def test_several_generate_calls_share_one_session(llama_swarm, llama_client, reference_model):
    ref = reference_model(llama_swarm.model)
    ids = prompt(1, 4, seed=8)
    with llama_client.inference_session(max_length=64) as session:
        first = llama_client.generate(ids, max_new_tokens=6, min_new_tokens=6, do_sample=False)
        after_first = session.position
        second = llama_client.generate(first[:, -1:], max_new_tokens=6, min_new_tokens=6, do_sample=False)
    expected = ref.generate(ids, max_new_tokens=12, min_new_tokens=12, do_sample=False)
    assert after_first == 4 + 6 - 1  # the last generated token is not fed back until the next call
    assert torch.cat([first, second[:, 1:]], dim=1).tolist() == expected.tolist()


def test_gradients_match_local_autograd(llama_swarm, llama_client, reference_model):
    ref = reference_model(llama_swarm.model)
    ids = prompt(2, 9, seed=2)
    # prompt tuning: trainable soft prompt in front of the embeddings, plus the local head
    soft = torch.randn(1, 3, ref.config.hidden_size, generator=torch.Generator().manual_seed(1)) * 0.1
    ours_soft = soft.clone().requires_grad_(True)
    theirs_soft = soft.clone().requires_grad_(True)
    llama_client.zero_grad()
    ref.zero_grad()

    emb = llama_client.get_input_embeddings()(ids)
    ours = llama_client(inputs_embeds=torch.cat([ours_soft.expand(2, -1, -1), emb], 1), labels=None).logits
    ours.float().log_softmax(-1)[..., 7].mean().backward()
    emb_ref = ref.get_input_embeddings()(ids)
    theirs = ref(inputs_embeds=torch.cat([theirs_soft.expand(2, -1, -1), emb_ref], 1)).logits
    theirs.log_softmax(-1)[..., 7].mean().backward()

    torch.testing.assert_close(ours_soft.grad, theirs_soft.grad, atol=1e-6, rtol=1e-4)
    ours_head = llama_client.parts.lm_head.weight.grad
    theirs_head = ref.get_output_embeddings().weight.grad
    assert ours_head is not None and ours_head.abs().sum() > 0
    torch.testing.assert_close(ours_head, theirs_head, atol=1e-6, rtol=1e-4)


def test_session_over_max_length_is_a_clear_error(llama_swarm, llama_client):
    with llama_client.inference_session(max_length=6):
        with pytest.raises(SessionLengthError, match="max_length is 6"):
            llama_client.generate(prompt(1, 4), max_new_tokens=10, min_new_tokens=10, do_sample=False)


def test_padded_batches_are_refused_or_exact_never_silently_wrong(llama_swarm, llama_client, reference_model):
    from client.model import PaddingNotSupportedError

    ref = reference_model(llama_swarm.model)
    ids = prompt(2, 9, seed=4)
    right = torch.ones_like(ids)
    right[1, 6:] = 0  # second prompt is 6 tokens, padded on the right
    with torch.no_grad():
        ours, theirs = llama_client(ids, attention_mask=right).logits, ref(ids, attention_mask=right).logits
    torch.testing.assert_close(ours[0], theirs[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours[1, :6], theirs[1, :6], atol=1e-5, rtol=1e-5)  # the real positions

    left = torch.ones_like(ids)
    left[1, :3] = 0
    with pytest.raises(PaddingNotSupportedError, match="one at a time"), torch.no_grad():
        llama_client(ids, attention_mask=left)
    for mask in (left, right):  # generating after padding: new tokens would attend to the pads
        with pytest.raises(PaddingNotSupportedError, match="batches of equal length"):
            llama_client.generate(ids, attention_mask=mask, max_new_tokens=3, do_sample=False)
    # the swarm still serves the next caller
    assert llama_client.generate(ids[:1], max_new_tokens=3, do_sample=False).shape == (1, 12)
