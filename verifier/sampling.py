"""Which receipts to challenge, and which block of each.

The ledger gives every receipt a uniform `sample_draw` fixed at ingestion; a receipt is
challenged when its draw is below its node's rate, so the choice is a pure function of
the receipt: a restarted verifier picks the same receipts (none repeated: those already
have a verdict; none skipped: the rest are still due). Rates rise for new nodes (little
track record) and for nodes whose receipts are worth more than the swarm's average.

The block is chosen by a keyed hash with a secret only the verifier holds, so a node
cannot predict which block will be opened, and a restart cannot re-roll:

- forward and backward receipts, and any inference receipt not recorded as a member
  of its session's check: `challenged_block`, keyed by the receipt id (each receipt
  its own draw);
- inference receipts of one (node, session, span): `session_block`, keyed by the
  session, so every sampled step of a session opens the same block and the verifier
  extends that block's prefix keys/values from one step to the next instead of
  recomputing them (verifier/recompute.py `PrefixCache`), or on narrow blocks computes
  the rows of all of them in one layer call (`extend_session_rows`). A check of a
  64-step session sampled at 5 % then costs the prefix's projections once, not once per
  check (benchmarks/verifier.py `sampled_session_figures`: 0.026 of the node's compute
  against 0.047-0.051 with per-receipt blocks on the same steps, 4 x 128 Llama).

What the session block gives up, and how the service keeps it safe (verifier/service.py):
the first challenge of a session tells the node that session's block, and with it
which blocks of the session's *other* receipts will never be opened. So the service
challenges a session only once it looks over (no receipt of the node for that client
for a quiet period, or a maximum wait), records which of its sampled receipts share the
session block *before* the first challenge (`VerifierState.close_session`), and gives
every receipt of the session that reaches it later its own per-receipt block: those
were signed or shipped after the node could have learned the session block, so the
session block would be known to them. A member receipt was ingested by the ledger
before the first challenge went out, so its commitments were fixed before the node
could know the block. Each receipt's block stays uniform over its span and
unpredictable without the secret; what changes is that the checks of one session are
no longer independent draws: a node cheating on one block in every step of a session
is caught with probability 1/n per sampled session (not 1 - (1 - 1/n)^k over its k
sampled steps). The expected number of catches is the same; they come in lumps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from protocol.hashing import digest
from protocol.receipts import Kind, Receipt


@dataclass(frozen=True)
class SamplingPolicy:
    base_rate: float = 0.05
    new_node_boost: float = 4.0  # rate multiplier while a node has few checked receipts
    new_node_checks: int = 20  # "new" until this many of its receipts got a pass/fail
    max_value_boost: float = 4.0  # cap of the value multiplier

    def node_rate(self, node: dict[str, Any], mean_value_all: float) -> float:
        """Sampling rate for one node's receipts (from its /v1/nodes record)."""
        boost = 1.0
        checked = int(node.get("passes", 0)) + int(node.get("fails", 0))
        if checked < self.new_node_checks:
            boost *= self.new_node_boost
        receipts = max(int(node.get("receipts", 0)), 1)
        mean_value = float(node.get("claimed", 0)) / receipts
        if mean_value_all > 0:
            boost *= min(max(mean_value / mean_value_all, 1.0), self.max_value_boost)
        return min(1.0, self.base_rate * boost)


def mean_value(nodes: list[dict[str, Any]]) -> float:
    total = sum(float(n.get("claimed", 0)) for n in nodes)
    count = sum(int(n.get("receipts", 0)) for n in nodes)
    return total / count if count else 0.0


def challenged_block(secret: bytes, receipt: Receipt) -> int:
    """The block to open: uniform over the span, unpredictable without `secret`."""
    h = digest(b"COROLLA/challenge/v1" + secret + receipt.receipt_id())
    return receipt.block_start + int.from_bytes(h[:8], "big") % receipt.num_blocks


def session_block(secret: bytes, receipt: Receipt) -> int:
    """The block every member receipt of this inference session opens (module docstring):
    uniform over the span, the same for every step of one (node, session, span),
    independent across sessions, unpredictable without `secret`."""
    return block_of_session(
        secret, receipt.node_key, receipt.session_id, receipt.block_start, receipt.block_end
    )


def block_of_session(
    secret: bytes, node_key: bytes, session_id: bytes, block_start: int, block_end: int
) -> int:
    """`session_block` from the session's coordinates alone."""
    h = digest(
        b"COROLLA/challenge-session/v1"
        + secret
        + node_key
        + session_id
        + block_start.to_bytes(2, "big")
        + block_end.to_bytes(2, "big")
    )
    return block_start + int.from_bytes(h[:8], "big") % (block_end - block_start)


def is_session_receipt(receipt: Receipt) -> bool:
    """Receipts whose checks wait for their session to end and share its block."""
    return receipt.kind == Kind.INFERENCE
