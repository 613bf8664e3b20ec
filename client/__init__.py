"""client role of Corolla (see ARCHITECTURE.md): the swarm seen as a Hugging Face model."""

from __future__ import annotations

from typing import Any

__all__ = ["AutoDistributedModelForCausalLM", "DistributedModelForCausalLM"]


def __getattr__(name: str) -> Any:  # lazy: `import client` stays cheap (no torch/transformers)
    if name in __all__:
        from client import model

        return getattr(model, name)
    raise AttributeError(name)
