"""Fixtures: a real ledger process per database backend (SQLite file, private PostgreSQL)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.ledger.harness import LedgerProcess, PostgresCluster, pg_bin, small_manifest


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PostgresCluster]:
    if pg_bin() is None:
        pytest.skip("PostgreSQL binaries are absent (scripts/setup --system installs them)")
    cluster = PostgresCluster().start()
    try:
        yield cluster
    finally:
        cluster.stop()


def _db_url(kind: str, request: pytest.FixtureRequest, tmp) -> str:  # type: ignore[no-untyped-def]
    if kind == "sqlite":
        return f"sqlite:///{tmp / 'ledger.db'}"
    cluster: PostgresCluster = request.getfixturevalue("pg_cluster")
    return cluster.new_database()


@pytest.fixture(scope="session", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def ledger(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LedgerProcess]:
    """A shared ledger (grace period 0, so unsampled receipts are payable at the next epoch)."""
    tmp = tmp_path_factory.mktemp(f"ledger-{request.param}")
    server = LedgerProcess(_db_url(request.param, request, tmp), tmp, args=["--grace-s", "0"])
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def fresh_ledger(request: pytest.FixtureRequest, tmp_path) -> Iterator:  # type: ignore[no-untyped-def]
    """Factory for a private ledger with extra flags, on SQLite or PostgreSQL."""
    started: list[LedgerProcess] = []

    def start(kind: str = "sqlite", args: list[str] | None = None) -> LedgerProcess:
        tmp = tmp_path / f"l{len(started)}"
        tmp.mkdir()
        server = LedgerProcess(_db_url(kind, request, tmp), tmp, args=args or [])
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def manifest():  # type: ignore[no-untyped-def]
    return small_manifest()
