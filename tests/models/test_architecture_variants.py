"""Layouts `make-model` does not produce by default still match transformers: ALiBi and
40B-style Falcon, sequential Falcon, short sliding windows (Mistral, Qwen2), tied Llama."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import transformers as tf

from models.local_parts import LocalParts
from models.make_model import save_model
from models.span import BlockSpan

COMMON = dict(vocab_size=320, hidden_size=64, num_hidden_layers=3, num_attention_heads=4)
VARIANTS = {
    "falcon-alibi": lambda: tf.FalconConfig(
        **COMMON, alibi=True, multi_query=True, parallel_attn=True, bias=True
    ),
    "falcon-new-decoder": lambda: tf.FalconConfig(**COMMON, new_decoder_architecture=True, num_kv_heads=2),
    "falcon-sequential": lambda: tf.FalconConfig(**COMMON, parallel_attn=False, multi_query=False),
    "mistral-window-4": lambda: tf.MistralConfig(
        **COMMON, num_key_value_heads=2, intermediate_size=128, sliding_window=4
    ),
    "qwen2-window-4": lambda: tf.Qwen2Config(
        **COMMON,
        num_key_value_heads=2,
        intermediate_size=128,
        use_sliding_window=True,
        sliding_window=4,
        max_window_layers=1,
    ),
    "llama-tied": lambda: tf.LlamaConfig(**COMMON, intermediate_size=128, tie_word_embeddings=True),
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_variant_matches_transformers_in_forward_and_steps(variant: str, tmp_path: Path) -> None:
    model_dir = save_model(VARIANTS[variant](), tmp_path / variant)
    reference = tf.AutoModelForCausalLM.from_pretrained(model_dir).eval()
    ids = torch.randint(4, 300, (2, 10), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = reference(ids).logits
        parts = LocalParts.load(model_dir)
        first, rest = BlockSpan.load(model_dir, 0, 1), BlockSpan.load(model_dir, 1, 3)
        hidden = parts.embed(ids)
        torch.testing.assert_close(
            parts.head(rest.forward(first.forward(hidden))), expected, atol=1e-5, rtol=0
        )

        caches = first.new_cache(2, 10), rest.new_cache(2, 10)
        pieces = [
            rest.step(first.step(hidden[:, a:b], caches[0]), caches[1])
            for a, b in [(0, 3), (3, 4), (4, 8), (8, 9), (9, 10)]
        ]
        torch.testing.assert_close(parts.head(torch.cat(pieces, 1)), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("variant", ["falcon-alibi", "mistral-window-4", "qwen2-window-4"])
def test_variant_matches_transformers_on_a_left_padded_batch(variant: str, tmp_path: Path) -> None:
    model_dir = save_model(VARIANTS[variant](), tmp_path / variant)
    reference = tf.AutoModelForCausalLM.from_pretrained(model_dir).eval()
    ids = torch.randint(4, 300, (2, 9), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[1, :4] = 0
    positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)
    with torch.no_grad():
        expected = reference(ids, attention_mask=mask, position_ids=positions).logits
        parts = LocalParts.load(model_dir)
        span = BlockSpan.load(model_dir, 0, 3)
        logits = parts.head(span.forward(parts.embed(ids), attention_mask=mask, position_ids=positions))
    real = mask.bool()
    torch.testing.assert_close(logits[real], expected[real], atol=1e-5, rtol=0)
