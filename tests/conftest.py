"""Fixtures shared by every test area.

`small_model(arch, **kwargs)` makes a small seeded model once per session and argument set
(see models.make_model.make_model for the arguments) and returns its directory. Treat the
directory as read-only: other tests reuse it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def small_model(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    made: dict[tuple, Path] = {}

    def make(arch: str = "llama", **kwargs: object) -> Path:
        from models.make_model import make_model

        key = (arch, tuple(sorted(kwargs.items())))
        if key not in made:
            out = tmp_path_factory.mktemp(f"model-{arch}")
            made[key] = make_model(arch, out, **kwargs)  # type: ignore[arg-type]
        return made[key]

    return make
