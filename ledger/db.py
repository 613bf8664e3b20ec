"""Database engine and versioned schema for SQLite (default) and PostgreSQL (psycopg 3).

SQLite runs in WAL mode with a busy timeout, and every transaction starts with
`BEGIN IMMEDIATE`, so concurrent writers queue instead of failing on a lock upgrade.
`synchronous=NORMAL` in WAL mode survives a killed process (only a power cut may lose
the last commits). The schema is versioned: `schema_version` holds the applied
migrations; `migrate()` creates missing tables and applies each newer migration once, in
one transaction, so a restart never rewrites data.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from sqlalchemy import Connection, Engine, create_engine, event, select, text
from sqlmodel import Session, SQLModel, col

from ledger import models  # noqa: F401  (registers the tables)
from ledger.models import SchemaVersion


def normalize_url(url: str) -> str:
    """Accept plain postgresql:// URLs and route them to psycopg 3."""
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def make_engine(url: str, read_only: bool = False) -> Engine:
    """Engine for `url`. On SQLite, `read_only=True` gives deferred transactions (WAL
    readers never wait for writers); writers always `BEGIN IMMEDIATE`."""
    url = normalize_url(url)
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn, _record):  # type: ignore[no-untyped-def]
            dbapi_conn.isolation_level = None  # we emit BEGIN ourselves
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn):  # type: ignore[no-untyped-def]
            conn.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")

        return engine
    if url.startswith("postgresql"):
        return create_engine(url, pool_size=5 if read_only else 10, max_overflow=10, pool_pre_ping=True)
    raise ValueError(f"unsupported database URL {url!r}: use sqlite:///FILE or postgresql://...")


# Bound parameters in one statement: SQLite >= 3.32 allows 32766, PostgreSQL 65535.
MAX_PARAMETERS_SQLITE = 32766
MAX_PARAMETERS_PG = 65535


def is_postgres(engine: Engine) -> bool:
    return engine.dialect.name == "postgresql"


def _v1_initial(conn: Connection) -> None:
    SQLModel.metadata.create_all(conn)


def _v2_verdict_evidence(conn: Connection) -> None:
    from ledger.models import VerdictEvidence

    VerdictEvidence.__table__.create(conn, checkfirst=True)  # type: ignore[attr-defined]


# (version, description, apply). Append only; never edit a released migration.
MIGRATIONS: list[tuple[int, str, Callable[[Connection], None]]] = [
    (1, "initial tables", _v1_initial),
    (2, "evidence stored with verdicts", _v2_verdict_evidence),
]


def schema_version(engine: Engine) -> int:
    with engine.connect() as conn:
        if not engine.dialect.has_table(conn, "schemaversion"):
            return 0
        rows = conn.execute(select(col(SchemaVersion.version))).scalars().all()  # type: ignore[call-overload]
        return max(rows, default=0)


def migrate(engine: Engine) -> int:
    """Bring the schema to the newest version; returns it. Safe to call on every start."""
    with engine.begin() as conn:
        if is_postgres(engine):  # one migrator at a time across processes
            conn.execute(text("SELECT pg_advisory_xact_lock(424242)"))
        SchemaVersion.__table__.create(conn, checkfirst=True)  # type: ignore[attr-defined]
        done = set(conn.execute(select(col(SchemaVersion.version))).scalars().all())  # type: ignore[call-overload]
        for version, _description, apply in MIGRATIONS:
            if version not in done:
                apply(conn)
                conn.execute(
                    SchemaVersion.__table__.insert().values(  # type: ignore[attr-defined]
                        version=version, applied_ms=int(time.time() * 1000)
                    )
                )
    return MIGRATIONS[-1][0]


@contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """One transaction: commit on success, roll back on any exception."""
    with Session(engine, expire_on_commit=False) as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise


def insert_ignore(session: Session, table: type[SQLModel], rows: list[dict], key: str) -> set:
    """INSERT rows, skipping ones whose primary key exists; returns the `key`s inserted.

    One statement per batch (ON CONFLICT DO NOTHING ... RETURNING) on both databases, so
    concurrent submitters of overlapping batches each see every row inserted exactly once.
    Every row has the same columns (those of the first). The statement goes to the driver
    as one multi-row VALUES list with plain parameters (ints, strs, bytes, bools, floats,
    None need no conversion on either database): SQLAlchemy's per-row parameter
    processing cost more than SQLite's own insert of a receipt.
    """
    if not rows:
        return set()
    conn = session.connection()
    dialect = conn.dialect
    quote = dialect.identifier_preparer.quote
    columns = list(rows[0])
    mark = "?" if dialect.name == "sqlite" else "%s"
    row_marks = "(" + ",".join([mark] * len(columns)) + ")"
    name = table.__table__.name  # type: ignore[attr-defined]
    head = f"INSERT INTO {quote(name)} ({','.join(quote(c) for c in columns)}) VALUES "
    tail = f" ON CONFLICT DO NOTHING RETURNING {quote(key)}"
    per_statement = max(1, (MAX_PARAMETERS_SQLITE if dialect.name == "sqlite" else MAX_PARAMETERS_PG) // len(columns))
    inserted: set = set()
    for start in range(0, len(rows), per_statement):
        chunk = rows[start:start + per_statement]
        params = tuple([row[c] for row in chunk for c in columns])
        result = conn.exec_driver_sql(head + ",".join([row_marks] * len(chunk)) + tail, params)
        inserted.update(r[0] for r in result.all())
    return inserted
