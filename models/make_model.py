"""Write a small model with seeded random weights, an offline tokenizer and its manifest.

Tests, benchmarks and the demo need real architectures without a hub: the config comes
from the real `transformers` config class, weights from the model's own initializer under
`torch.manual_seed(seed)`, so the same arguments give the same weights and manifest hash.
MLP widths are multiples of 64 so bitsandbytes' 4-bit CPU kernel accepts every block.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from models import SUPPORTED_ARCHS
from models.manifest_builder import build_manifest, write_manifest
from models.offline_tokenizer import BOS_ID, EOS_ID, PAD_ID, write_tokenizer

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _round_up(value: float, multiple: int) -> int:
    return max(multiple, int(-(-value // multiple) * multiple))


def small_config(arch: str, *, layers: int, hidden: int, heads: int | None, vocab: int) -> Any:
    """A real transformers config of the given family with small dimensions."""
    import transformers as tf

    if arch not in SUPPORTED_ARCHS:
        raise ValueError(f"unknown arch {arch!r}; choose one of {', '.join(SUPPORTED_ARCHS)}")
    heads = heads or max(1, hidden // 32)
    if hidden % heads or (hidden // heads) % 2:
        raise ValueError(f"hidden size {hidden} must split into {heads} heads of even size")
    kv_heads = heads // 2 if heads % 2 == 0 else heads  # grouped-query attention where possible
    common: dict[str, Any] = dict(
        vocab_size=vocab,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        pad_token_id=PAD_ID,
    )
    llama_like = dict(
        common,
        num_key_value_heads=kv_heads,
        intermediate_size=_round_up(hidden * 8 / 3, 64),
        max_position_embeddings=2048,
        tie_word_embeddings=False,
    )
    if arch == "llama":
        return tf.LlamaConfig(**llama_like)
    if arch == "mistral":
        return tf.MistralConfig(**llama_like, sliding_window=4096)
    if arch == "qwen2":
        return tf.Qwen2Config(**llama_like)
    if arch == "mixtral":
        return tf.MixtralConfig(
            **dict(llama_like, intermediate_size=_round_up(hidden * 2, 64)),
            num_local_experts=4,
            num_experts_per_tok=2,
        )
    if arch == "bloom":
        return tf.BloomConfig(
            vocab_size=vocab,
            hidden_size=hidden,
            n_layer=layers,
            n_head=heads,
            bos_token_id=BOS_ID,
            eos_token_id=EOS_ID,
            pad_token_id=PAD_ID,
        )
    # falcon: the 7B layout (rotary, multi-query, parallel attention + MLP)
    return tf.FalconConfig(
        **common,
        new_decoder_architecture=False,
        multi_query=True,
        parallel_attn=True,
        alibi=False,
        bias=False,
        ffn_hidden_size=_round_up(hidden * 4, 64),
    )


def make_model(
    arch: str,
    out_dir: str | Path,
    *,
    layers: int = 4,
    hidden: int = 128,
    heads: int | None = None,
    vocab: int = 512,
    seed: int = 0,
    dtype: str | torch.dtype = "float32",
    max_shard_size: str | None = None,
) -> Path:
    """Write the model to out_dir (created) and return it; `max_shard_size` (e.g. "100KB")
    writes a sharded checkpoint with model.safetensors.index.json."""
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise ValueError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
        dtype = DTYPES[dtype]
    if layers < 1 or hidden < 8:
        raise ValueError("need at least 1 layer and a hidden size of at least 8")
    config = small_config(arch, layers=layers, hidden=hidden, heads=heads, vocab=vocab)
    name = f"{arch}-{layers}x{hidden}-seed{seed}"
    return save_model(config, out_dir, seed=seed, dtype=dtype, max_shard_size=max_shard_size, name=name)


def save_model(
    config: Any,
    out_dir: str | Path,
    *,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    max_shard_size: str | None = None,
    name: str = "",
) -> Path:
    """Any transformers config -> a model dir with seeded weights, tokenizer and manifest
    (for variants `make_model` does not cover, e.g. ALiBi Falcon or a short sliding window)."""
    import transformers as tf
    from transformers.utils import logging as hf_logging

    torch.manual_seed(seed)
    model = tf.AutoModelForCausalLM.from_config(config).to(dtype)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # a small model saves in milliseconds
    try:
        model.save_pretrained(out, **kwargs)
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    write_tokenizer(out, config.vocab_size)
    write_manifest(out, build_manifest(out, name=name))
    return out
