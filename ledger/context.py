"""What every request handler of one ledger process shares: settings, engine, ledger key."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from sqlalchemy import Engine

from ledger.config import Settings
from ledger.signature_pool import SignaturePool
from protocol.identity import Identity


@dataclass
class LedgerContext:
    settings: Settings
    engine: Engine  # writes
    read_engine: Engine  # public reads (SQLite: deferred transactions)
    identity: Identity
    pool: SignaturePool
    manifests: dict[str, tuple[int, int]] = field(default_factory=dict)  # hash -> (blocks, flops/token)
    # One anchoring pass at a time per process: the start-up catch-up job and an epoch close
    # must not both send the same root (the second would revert and leave the row unrecorded).
    anchor_lock: threading.Lock = field(default_factory=threading.Lock)
