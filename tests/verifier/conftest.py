"""Fixtures for the verifier: a small model and a second one with other weights, the
shipped thresholds, and a block loader (single blocks, cached) shared by the session."""

from __future__ import annotations

from pathlib import Path

import pytest

from verifier.recompute import BlockLoader
from verifier.tolerance import Thresholds

MODEL = {"layers": 4, "hidden": 64, "seed": 0}


@pytest.fixture(scope="session")
def model_dir(small_model) -> Path:  # type: ignore[no-untyped-def]
    return small_model("llama", **MODEL)


@pytest.fixture(scope="session")
def other_model_dir(small_model) -> Path:  # type: ignore[no-untyped-def]
    return small_model("llama", **{**MODEL, "seed": 1})


@pytest.fixture(scope="session")
def thresholds() -> Thresholds:
    return Thresholds.load()


@pytest.fixture(scope="session")
def loader(model_dir: Path) -> BlockLoader:
    return BlockLoader(model_dir, capacity=4)
