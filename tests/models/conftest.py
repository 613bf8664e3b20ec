"""Per-architecture models for the models/ tests: made once per session, with the reference
`transformers` model loaded from the same directory."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from models import SUPPORTED_ARCHS

LAYERS, HIDDEN = 4, 64


@dataclass
class ArchCase:
    arch: str
    model_dir: Path
    layers: int
    reference: Any  # transformers *ForCausalLM, eval mode, fp32


@pytest.fixture(scope="session", params=SUPPORTED_ARCHS)
def arch_case(request: pytest.FixtureRequest, small_model: Callable[..., Path]) -> ArchCase:
    import transformers

    model_dir = small_model(request.param, layers=LAYERS, hidden=HIDDEN)
    reference = transformers.AutoModelForCausalLM.from_pretrained(model_dir).eval()
    return ArchCase(request.param, model_dir, LAYERS, reference)
