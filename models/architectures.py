"""How each Hugging Face architecture is cut into blocks and how one block is called.

A block is one decoder layer. An adapter knows, for its family: the checkpoint names of
block i and of the client-side modules, how to build one layer from the config, how to
compute what a layer needs besides the hidden states (rotary cos/sin or ALiBi, an explicit
additive causal mask), and the keyword convention of the layer's `forward`.

Masks are always explicit, additive and float: `None` means "causal" for SDPA but "no
mask at all" for eager attention and BLOOM, and a chunk after a cached prefix needs the
prefix columns anyway (see TOOLCHAIN.md).
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from models import SUPPORTED_ARCHS


@dataclass
class LayerInputs:
    """Everything a layer needs besides hidden states, shared by all layers of a span."""

    position_ids: torch.Tensor  # [1|B, T] absolute positions
    masks: dict[int | None, torch.Tensor]  # sliding window (None = full) -> additive [1|B, 1, T, K]
    rotary: tuple[torch.Tensor, torch.Tensor] | None = None
    alibi: torch.Tensor | None = None


def causal_mask(
    start: int,
    length: int,
    dtype: torch.dtype,
    device: torch.device,
    window: int | None = None,
    padding: torch.Tensor | None = None,
) -> torch.Tensor:
    """Additive mask [1|B, 1, length, start+length]: query at position p sees keys <= p (and
    > p-window), except keys where `padding` [B, start+length] is 0."""
    q = torch.arange(start, start + length, device=device)[:, None]
    k = torch.arange(start + length, device=device)[None, :]
    allowed = (k <= q)[None, None]
    if window is not None:
        allowed = allowed & (k > q - window)
    if padding is not None:
        allowed = allowed & padding.to(device=device, dtype=torch.bool)[:, None, None, :]
    mask = torch.zeros(allowed.shape, dtype=dtype, device=device)
    return mask.masked_fill_(~allowed, torch.finfo(dtype).min)


def _positions(
    hidden: torch.Tensor, past: int, position_ids: torch.Tensor | None
) -> tuple[torch.Tensor, int, int]:
    batch, length = hidden.shape[:2]
    if position_ids is None:
        position_ids = torch.arange(past, past + length, device=hidden.device)[None]
    return position_ids.to(hidden.device), batch, length


def _ones_if_none(mask: torch.Tensor | None, batch: int, length: int, device: torch.device) -> torch.Tensor:
    if mask is None:
        return torch.ones(batch, length, dtype=torch.long, device=device)
    return mask.to(device=device, dtype=torch.long)


def _hf_module(model_type: str) -> Any:
    return importlib.import_module(f"transformers.models.{model_type}.modeling_{model_type}")


class BlockArch:
    """Adapter base: one honest default (the Llama family); other families override."""

    name = "llama"
    layer_class = "LlamaDecoderLayer"
    rotary_class = "LlamaRotaryEmbedding"
    norm_class = "LlamaRMSNorm"
    block_prefix_template = "model.layers.{i}."
    base_prefix = "model."  # prefix under which the HF base model keeps its weights
    attn_implementation: str | None = "sdpa"

    def __init__(self, config: Any) -> None:
        self.config = config
        if self.attn_implementation is not None:
            config._attn_implementation = self.attn_implementation
        self.module = _hf_module(config.model_type)

    # ---- naming -------------------------------------------------------------------------
    def block_prefix(self, index: int) -> str:
        return self.block_prefix_template.format(i=index)

    # ---- building -----------------------------------------------------------------------
    def build_layer(self, index: int) -> nn.Module:
        return getattr(self.module, self.layer_class)(self.config, index)

    def convert_block_state(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Checkpoint names/layout of one block (relative names) -> the layer's state dict."""
        return state

    def build_local_modules(self) -> dict[str, tuple[str, nn.Module]]:
        """Client-side modules: role -> (checkpoint prefix, module). Roles: embed, embed_norm
        (BLOOM only), norm, head."""
        c = self.config
        norm = getattr(self.module, self.norm_class)(c.hidden_size, eps=c.rms_norm_eps)
        return {
            "embed": ("model.embed_tokens.", nn.Embedding(c.vocab_size, c.hidden_size, c.pad_token_id)),
            "norm": ("model.norm.", norm),
            "head": ("lm_head.", nn.Linear(c.hidden_size, c.vocab_size, bias=False)),
        }

    def kv_shape(self) -> tuple[int, int]:
        """(key/value heads, head dim) of one layer's cache."""
        c = self.config
        head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
        return c.num_key_value_heads, head_dim

    def sliding_window(self, index: int) -> int | None:
        c = self.config
        layer_types = getattr(c, "layer_types", None)
        if layer_types is not None and layer_types[index] != "sliding_attention":
            return None
        if getattr(c, "use_sliding_window", True) is False:
            return None
        return getattr(c, "sliding_window", None)

    def new_position_module(self, device: torch.device) -> nn.Module | None:
        with torch.device(device):
            return getattr(self.module, self.rotary_class)(config=self.config)

    # ---- calling ------------------------------------------------------------------------
    def layer_inputs(
        self,
        position_module: nn.Module | None,
        hidden: torch.Tensor,
        past: int,
        windows: set[int | None],
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> LayerInputs:
        """Masks and position encodings for the T new positions of `hidden` after `past` cached
        ones. attention_mask [B, past+T]: 1 = token, 0 = padding; position_ids [1|B, T]."""
        pos, _, length = _positions(hidden, past, position_ids)
        masks = {
            w: causal_mask(past, length, hidden.dtype, hidden.device, w, attention_mask) for w in windows
        }
        assert position_module is not None
        return LayerInputs(position_ids=pos, masks=masks, rotary=position_module(hidden, pos))

    def call_layer(
        self, layer: nn.Module, hidden: torch.Tensor, inputs: LayerInputs, window: int | None, cache: Any
    ) -> torch.Tensor:
        return layer(
            hidden,
            attention_mask=inputs.masks[window],
            position_ids=inputs.position_ids,
            past_key_values=cache,
            use_cache=cache is not None,
            position_embeddings=inputs.rotary,
        )


class MistralArch(BlockArch):
    name = "mistral"
    layer_class = "MistralDecoderLayer"
    rotary_class = "MistralRotaryEmbedding"
    norm_class = "MistralRMSNorm"


class Qwen2Arch(BlockArch):
    name = "qwen2"
    layer_class = "Qwen2DecoderLayer"
    rotary_class = "Qwen2RotaryEmbedding"
    norm_class = "Qwen2RMSNorm"


class MixtralArch(BlockArch):
    """Mixtral: Llama attention with a sparse mixture of experts as the MLP."""

    name = "mixtral"
    layer_class = "MixtralDecoderLayer"
    rotary_class = "MixtralRotaryEmbedding"
    norm_class = "MixtralRMSNorm"

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        config._experts_implementation = "eager"  # plain per-expert loop: same math on every device

    def convert_block_state(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Checkpoints keep one w1/w2/w3 per expert under `block_sparse_moe.`; the layer wants
        `mlp.experts.gate_up_proj` [E, 2I, H] (w1 then w3) and `mlp.experts.down_proj` [E, H, I]."""
        old = "block_sparse_moe."
        if not any(k.startswith(old) for k in state):
            return state
        out = {k: v for k, v in state.items() if not k.startswith(old)}
        out["mlp.gate.weight"] = state[old + "gate.weight"]
        experts = range(self.config.num_local_experts)

        def w(e: int, n: int) -> torch.Tensor:
            return state[f"{old}experts.{e}.w{n}.weight"]

        out["mlp.experts.gate_up_proj"] = torch.stack([torch.cat([w(e, 1), w(e, 3)], 0) for e in experts])
        out["mlp.experts.down_proj"] = torch.stack([w(e, 2) for e in experts])
        return out


class BloomArch(BlockArch):
    """BLOOM: ALiBi instead of rotary, eager attention only, embedding layernorm on the client."""

    name = "bloom"
    layer_class = "BloomBlock"
    block_prefix_template = "transformer.h.{i}."
    base_prefix = "transformer."
    attn_implementation = None

    def build_local_modules(self) -> dict[str, tuple[str, nn.Module]]:
        c = self.config
        return {
            "embed": ("transformer.word_embeddings.", nn.Embedding(c.vocab_size, c.hidden_size)),
            "embed_norm": (
                "transformer.word_embeddings_layernorm.",
                nn.LayerNorm(c.hidden_size, eps=c.layer_norm_epsilon),
            ),
            "norm": ("transformer.ln_f.", nn.LayerNorm(c.hidden_size, eps=c.layer_norm_epsilon)),
            "head": ("lm_head.", nn.Linear(c.hidden_size, c.vocab_size, bias=False)),
        }

    def kv_shape(self) -> tuple[int, int]:
        c = self.config
        return c.n_head, c.hidden_size // c.n_head

    def sliding_window(self, index: int) -> int | None:
        return None

    def new_position_module(self, device: torch.device) -> nn.Module | None:
        return None

    def layer_inputs(
        self,
        position_module: nn.Module | None,
        hidden: torch.Tensor,
        past: int,
        windows: set[int | None],
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> LayerInputs:
        """ALiBi from the key positions, counted over non-padding tokens as transformers does."""
        pos, batch, length = _positions(hidden, past, position_ids)
        keys = _ones_if_none(attention_mask, batch, past + length, hidden.device)
        alibi = self.module.build_alibi_tensor(keys, self.config.n_head, dtype=hidden.dtype)
        mask = causal_mask(past, length, hidden.dtype, hidden.device, None, attention_mask)
        return LayerInputs(position_ids=pos, masks={None: mask}, alibi=alibi)

    def call_layer(
        self, layer: nn.Module, hidden: torch.Tensor, inputs: LayerInputs, window: int | None, cache: Any
    ) -> torch.Tensor:
        out = layer(
            hidden,
            alibi=inputs.alibi,
            attention_mask=inputs.masks[None],
            layer_past=cache,
            use_cache=cache is not None,
        )
        return out[0]


class FalconArch(BlockArch):
    """Falcon (rotary variants; ALiBi Falcon is folded into the additive mask like HF does)."""

    name = "falcon"
    layer_class = "FalconDecoderLayer"
    rotary_class = "FalconRotaryEmbedding"
    block_prefix_template = "transformer.h.{i}."
    base_prefix = "transformer."

    def build_local_modules(self) -> dict[str, tuple[str, nn.Module]]:
        c = self.config
        return {
            "embed": ("transformer.word_embeddings.", nn.Embedding(c.vocab_size, c.hidden_size)),
            "norm": ("transformer.ln_f.", nn.LayerNorm(c.hidden_size, eps=c.layer_norm_epsilon)),
            "head": ("lm_head.", nn.Linear(c.hidden_size, c.vocab_size, bias=False)),
        }

    def kv_shape(self) -> tuple[int, int]:
        c = self.config
        head_dim = c.hidden_size // c.num_attention_heads
        if c.new_decoder_architecture:  # HF expands keys/values to every head before caching
            return c.num_attention_heads, head_dim
        return (1 if c.multi_query else c.num_attention_heads), head_dim

    def sliding_window(self, index: int) -> int | None:
        return None

    def new_position_module(self, device: torch.device) -> nn.Module | None:
        if self.config.alibi:
            return None
        return super().new_position_module(device)

    def layer_inputs(
        self,
        position_module: nn.Module | None,
        hidden: torch.Tensor,
        past: int,
        windows: set[int | None],
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> LayerInputs:
        if not self.config.alibi:
            return super().layer_inputs(position_module, hidden, past, windows, attention_mask, position_ids)
        pos, batch, length = _positions(hidden, past, position_ids)
        heads = self.config.num_attention_heads
        keys = _ones_if_none(attention_mask, batch, past + length, hidden.device)
        alibi = self.module.build_alibi_tensor(keys, heads, dtype=hidden.dtype)
        mask = causal_mask(past, length, hidden.dtype, hidden.device, None, attention_mask)
        alibi = alibi.reshape(batch, heads, 1, past + length)
        folded = torch.masked_fill(
            alibi / math.sqrt(self.config.hidden_size // heads), mask < -1, torch.finfo(hidden.dtype).min
        )
        return LayerInputs(position_ids=pos, masks={None: folded}, alibi=alibi.reshape(batch * heads, 1, -1))

    def call_layer(
        self, layer: nn.Module, hidden: torch.Tensor, inputs: LayerInputs, window: int | None, cache: Any
    ) -> torch.Tensor:
        out = layer(
            hidden,
            alibi=inputs.alibi,
            attention_mask=inputs.masks[None],
            position_ids=inputs.position_ids,
            layer_past=cache,
            use_cache=cache is not None,
            position_embeddings=inputs.rotary,
        )
        return out[0] if isinstance(out, tuple) else out


_ADAPTERS: dict[str, type[BlockArch]] = {
    "llama": BlockArch,
    "mistral": MistralArch,
    "qwen2": Qwen2Arch,
    "mixtral": MixtralArch,
    "bloom": BloomArch,
    "falcon": FalconArch,
}


def arch_for_config(config: Any) -> BlockArch:
    """The adapter for a transformers config; ValueError for an unsupported model type."""
    model_type = getattr(config, "model_type", None)
    if model_type not in _ADAPTERS:
        raise ValueError(f"unsupported architecture {model_type!r}; supported: {', '.join(SUPPORTED_ARCHS)}")
    return _ADAPTERS[model_type](config)
