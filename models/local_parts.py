"""The parts of a model a client runs itself: token embeddings, the final norm and the head.

Blocks compute their own rotary/ALiBi position encodings, so `embed` only maps tokens to
vectors (plus BLOOM's embedding layernorm, which sits before block 0). Only these tensors
are read from the checkpoint; a tied head shares the embedding matrix like `transformers`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from models.architectures import arch_for_config
from models.loading import (
    CheckpointError,
    checkpoint_prefix,
    load_config,
    read_tensors,
    resolve_model_dir,
    weight_map,
)


class LocalParts(nn.Module):
    """Embeddings, final norm and LM head of one model; trainable like any nn.Module."""

    def __init__(self, config: Any, modules: dict[str, nn.Module], model_dir: Path) -> None:
        super().__init__()
        self.config = config
        self.model_dir = model_dir
        self.tokenizer_path = model_dir
        self.embed_tokens = modules["embed"]
        self.embed_norm = modules.get("embed_norm", nn.Identity())
        self.norm = modules["norm"]
        self.lm_head = modules["head"]

    @classmethod
    def load(
        cls, model: str | Path, *, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
    ) -> LocalParts:
        model_dir = resolve_model_dir(model)
        config = load_config(model_dir)
        arch = arch_for_config(config)
        wmap = weight_map(model_dir)
        tied = bool(getattr(config, "tie_word_embeddings", False))
        with torch.device("meta"):
            built = arch.build_local_modules()
        modules: dict[str, nn.Module] = {}
        for role, (full_prefix, module) in built.items():
            if role == "head" and (tied or not any(k.startswith(full_prefix) for k in wmap)):
                continue  # tied below
            prefix = checkpoint_prefix(wmap, full_prefix, arch.base_prefix)
            names = [k for k in wmap if k.startswith(prefix)]
            state = {k[len(prefix) :]: v.to(dtype) for k, v in read_tensors(model_dir, names, wmap).items()}
            try:
                module.load_state_dict(state, strict=True, assign=True)
            except RuntimeError as exc:
                raise CheckpointError(
                    f"{model_dir}: {full_prefix}* does not fit the architecture: {exc}"
                ) from exc
            modules[role] = module.to(device)
        if "head" not in modules:
            if not tied and "lm_head.weight" not in wmap:
                raise ValueError(f"{model_dir}: no lm_head weights and the config does not tie embeddings")
            head = built["head"][1]
            head.weight = modules["embed"].weight
            modules["head"] = head
        parts = cls(config, modules, model_dir)
        return parts

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Token ids [B, T] -> hidden states [B, T, H], the input of block 0."""
        return self.embed_norm(self.embed_tokens(input_ids))

    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        """Output of the last block [B, T, H] -> logits [B, T, vocab]."""
        return self.lm_head(self.norm(hidden))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.head(hidden)
