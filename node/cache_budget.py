"""Admission control for attention caches: sessions reserve batch × max_length tokens.

A session that would exceed the node's budget is refused up front (ErrorCode.BUSY), so a
node never runs out of memory halfway through somebody's generation.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class CacheBudget:
    max_tokens: int
    used: int = 0
    sessions: dict[bytes, int] = field(default_factory=dict)

    def reserve(self, session_id: bytes, tokens: int) -> bool:
        """Reserve `tokens` for a session; False if it does not fit or the id is taken."""
        if session_id in self.sessions or self.used + tokens > self.max_tokens:
            return False
        self.sessions[session_id] = tokens
        self.used += tokens
        return True

    def release(self, session_id: bytes) -> None:
        self.used -= self.sessions.pop(session_id, 0)
