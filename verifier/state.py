"""The verifier's own small SQLite file: what it decided, so a restart neither repeats nor skips.

- `verdicts`: one row per receipt it judged, written *before* posting to the ledger and
  marked posted after; a restart re-posts the very same signed verdict (same id, so the
  ledger stores it once) instead of challenging the node again.
- `receipts`: every receipt it has seen, indexed by output hash (replay detection) and by
  session (prefix checks of later inference steps).
- `unreachable`: consecutive unanswered challenges per node.
- `sessions`, `session_members`: inference sessions the verifier has started checking,
  and which of their receipts share the session's block (verifier/sampling.py). Written
  in one transaction before the session's first challenge, so a restart keeps the same
  members and blocks, and a receipt of the session seen later gets its own block.
- `meta`: the secret seed that picks the challenged block (unpredictable to nodes, stable
  across restarts, so a restart cannot re-roll a block).
"""

from __future__ import annotations

import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from protocol.receipts import Receipt, SignedReceipt

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS verdicts (
    receipt_id BLOB PRIMARY KEY, verdict_id BLOB NOT NULL, signed_json TEXT NOT NULL,
    evidence BLOB NOT NULL, posted INTEGER NOT NULL DEFAULT 0, created_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS receipts (
    id BLOB PRIMARY KEY, output_hash BLOB NOT NULL, session_id BLOB NOT NULL, node_key BLOB NOT NULL,
    raw BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS receipts_output ON receipts (output_hash);
CREATE INDEX IF NOT EXISTS receipts_session ON receipts (session_id);
CREATE TABLE IF NOT EXISTS unreachable (node_key BLOB PRIMARY KEY, misses INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS sessions (
    node_key BLOB NOT NULL, session_id BLOB NOT NULL, closed_ms INTEGER NOT NULL,
    PRIMARY KEY (node_key, session_id));
CREATE TABLE IF NOT EXISTS session_members (
    receipt_id BLOB PRIMARY KEY, node_key BLOB NOT NULL, session_id BLOB NOT NULL);
"""


@dataclass(frozen=True)
class StoredVerdict:
    receipt_id: bytes
    verdict_id: bytes
    signed_json: str
    evidence: bytes
    posted: bool


class VerifierState:
    """One SQLite file per verifier key; safe to reopen after a crash at any point."""

    def __init__(self, path: str | Path):
        self.path = Path(path).expanduser()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(SCHEMA)

    def close(self) -> None:
        self.db.close()

    # ----- secret seed -------------------------------------------------------------------
    def secret(self) -> bytes:
        row = self.db.execute("SELECT value FROM meta WHERE key = 'secret'").fetchone()
        if row is not None:
            return bytes(row[0])
        self.db.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('secret', ?)", (os.urandom(32),))
        return bytes(self.db.execute("SELECT value FROM meta WHERE key = 'secret'").fetchone()[0])

    # ----- verdicts ----------------------------------------------------------------------
    def verdict_for(self, receipt_id: bytes) -> StoredVerdict | None:
        row = self.db.execute(
            "SELECT receipt_id, verdict_id, signed_json, evidence, posted FROM verdicts WHERE receipt_id = ?",
            (receipt_id,),
        ).fetchone()
        return (
            None
            if row is None
            else StoredVerdict(bytes(row[0]), bytes(row[1]), row[2], bytes(row[3]), bool(row[4]))
        )

    def save_verdict(
        self, receipt_id: bytes, verdict_id: bytes, signed_json: str, evidence: bytes
    ) -> StoredVerdict:
        """Record a verdict before posting; the first one recorded for a receipt wins."""
        self.db.execute(
            "INSERT OR IGNORE INTO verdicts (receipt_id, verdict_id, signed_json, evidence, posted, created_ms)"
            " VALUES (?, ?, ?, ?, 0, ?)",
            (receipt_id, verdict_id, signed_json, evidence, int(time.time() * 1000)),
        )
        stored = self.verdict_for(receipt_id)
        assert stored is not None
        return stored

    def mark_posted(self, receipt_id: bytes) -> None:
        self.db.execute("UPDATE verdicts SET posted = 1 WHERE receipt_id = ?", (receipt_id,))

    def unposted(self) -> list[StoredVerdict]:
        rows = self.db.execute(
            "SELECT receipt_id, verdict_id, signed_json, evidence, posted FROM verdicts WHERE posted = 0"
            " ORDER BY created_ms"
        ).fetchall()
        return [StoredVerdict(bytes(r[0]), bytes(r[1]), r[2], bytes(r[3]), bool(r[4])) for r in rows]

    def evidence(self, verdict_id: bytes) -> bytes | None:
        row = self.db.execute("SELECT evidence FROM verdicts WHERE verdict_id = ?", (verdict_id,)).fetchone()
        return None if row is None else bytes(row[0])

    def count_verdicts(self) -> int:
        return int(self.db.execute("SELECT count(*) FROM verdicts").fetchone()[0])

    # ----- receipts index ----------------------------------------------------------------
    def remember(self, signed: SignedReceipt) -> None:
        r = signed.receipt
        self.db.execute(
            "INSERT OR IGNORE INTO receipts (id, output_hash, session_id, node_key, raw) VALUES (?, ?, ?, ?, ?)",
            (signed.id, r.output_hash, r.session_id, r.node_key, signed.to_bytes()),
        )

    def with_output(self, output_hash: bytes) -> list[SignedReceipt]:
        rows = self.db.execute("SELECT raw FROM receipts WHERE output_hash = ?", (output_hash,)).fetchall()
        return [SignedReceipt.from_bytes(bytes(r[0])) for r in rows]

    def in_session(self, session_id: bytes) -> list[Receipt]:
        rows = self.db.execute("SELECT raw FROM receipts WHERE session_id = ?", (session_id,)).fetchall()
        return [SignedReceipt.from_bytes(bytes(r[0])).receipt for r in rows]

    # ----- unanswered challenges ---------------------------------------------------------
    def missed(self, node_key: bytes) -> int:
        """Count one more unanswered challenge; returns the node's consecutive misses."""
        self.db.execute(
            "INSERT INTO unreachable (node_key, misses) VALUES (?, 1)"
            " ON CONFLICT(node_key) DO UPDATE SET misses = misses + 1",
            (node_key,),
        )
        return int(
            self.db.execute("SELECT misses FROM unreachable WHERE node_key = ?", (node_key,)).fetchone()[0]
        )

    def answered(self, node_key: bytes) -> None:
        self.db.execute("DELETE FROM unreachable WHERE node_key = ?", (node_key,))

    # ----- inference sessions under check ------------------------------------------------
    def close_session(self, node_key: bytes, session_id: bytes, receipt_ids: list[bytes]) -> list[bytes]:
        """Record that checking of a session starts, with the receipts that share its block.

        The first call for a session wins (a second one adds no members); returns the
        session's members as recorded."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            cur = self.db.execute(
                "INSERT OR IGNORE INTO sessions (node_key, session_id, closed_ms) VALUES (?, ?, ?)",
                (node_key, session_id, int(time.time() * 1000)),
            )
            if cur.rowcount:
                self.db.executemany(
                    "INSERT OR IGNORE INTO session_members (receipt_id, node_key, session_id) VALUES (?, ?, ?)",
                    [(rid, node_key, session_id) for rid in receipt_ids],
                )
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        rows = self.db.execute(
            "SELECT receipt_id FROM session_members WHERE node_key = ? AND session_id = ?",
            (node_key, session_id),
        ).fetchall()
        return [bytes(r[0]) for r in rows]

    def session_closed(self, node_key: bytes, session_id: bytes) -> bool:
        row = self.db.execute(
            "SELECT 1 FROM sessions WHERE node_key = ? AND session_id = ?", (node_key, session_id)
        ).fetchone()
        return row is not None

    def is_session_member(self, receipt_id: bytes) -> bool:
        row = self.db.execute("SELECT 1 FROM session_members WHERE receipt_id = ?", (receipt_id,)).fetchone()
        return row is not None
