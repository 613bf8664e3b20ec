"""Which receipts to challenge, and which block of each.

The ledger gives every receipt a uniform `sample_draw` fixed at ingestion; a receipt is
challenged when its draw is below its node's rate, so the choice is a pure function of
the receipt: a restarted verifier picks the same receipts (none repeated: those already
have a verdict; none skipped: the rest are still due). Rates rise for new nodes (little
track record) and for nodes whose receipts are worth more than the swarm's average.

The block is chosen by a keyed hash of the receipt id with a secret only the verifier
holds, so a node cannot predict which block will be opened, and a restart cannot re-roll.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from protocol.hashing import digest
from protocol.receipts import Receipt


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
