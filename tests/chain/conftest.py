"""Fixtures: a real anvil per session, contracts built by forge, funded dev accounts.

Without forge/anvil (no `npm ci`) these tests skip, unless COROLLA_REQUIRE_CHAIN=1 (set by
scripts/test): then a missing tool fails them, so CI cannot pass by skipping the chain.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest

from tests.chain.anvil import ANVIL, FORGE, ROOT, Anvil, require


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark everything here `chain` (needs anvil from node_modules; skipped without it)."""
    for item in items:
        if "tests/chain/" in str(item.fspath).replace("\\", "/"):
            item.add_marker(pytest.mark.chain)


@pytest.fixture(scope="session")
def built_contracts() -> None:
    """out/ from `forge build` (incremental: instant when up to date)."""
    require(FORGE, "forge")
    r = subprocess.run([str(FORGE), "build"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.fixture(scope="session")
def anvil(built_contracts: None) -> Iterator[Anvil]:
    require(ANVIL, "anvil")
    node = Anvil().start()
    try:
        yield node
    finally:
        node.stop()
