"""Wall-clock milliseconds, the one time unit stored by the ledger."""

from __future__ import annotations

import time


def now_ms() -> int:
    return int(time.time() * 1000)
