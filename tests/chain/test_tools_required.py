"""Chain tests skip without anvil/forge on a developer's machine, but fail in the test
command (scripts/test sets COROLLA_REQUIRE_CHAIN=1), so CI cannot pass by skipping them."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.chain.anvil import require


def test_missing_anvil_skips_for_developers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COROLLA_REQUIRE_CHAIN", raising=False)
    with pytest.raises(pytest.skip.Exception, match="anvil is absent"):
        require(tmp_path / "anvil", "anvil")
    require(Path(__file__), "present")  # a tool that exists: nothing happens


def test_missing_anvil_fails_when_the_chain_is_required(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COROLLA_REQUIRE_CHAIN", "1")
    with pytest.raises(pytest.fail.Exception, match="COROLLA_REQUIRE_CHAIN=1"):
        require(tmp_path / "anvil", "anvil")
