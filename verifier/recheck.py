"""`corolla verifier recheck`: reproduce a verdict from the ledger's records, or expose it.

The verdict names the receipt, the block and the hash of its evidence. The evidence
comes from the ledger (the base64 `evidence` the verifier posted with the verdict), or
a file, or, for openings, a fresh challenge of the node (which keeps them for its
retention window). Evidence that does not hash to the verdict's `openings_hash` is
itself a finding: the verdict does not rest on what it claims.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from protocol.verdicts import Reason, Result, SignedVerdict
from verifier.judge import OPENINGS, Judgement, evidence_hash, judge_evidence
from verifier.ledger_client import LedgerClient
from verifier.recompute import BlockLoader
from verifier.tolerance import DEFAULT_PATH, Thresholds


@dataclass
class RecheckOutcome:
    verdict_id: str
    claimed_result: Result
    claimed_reason: Reason
    reproduced: bool
    explanation: str
    recomputed: Judgement | None = None

    def summary(self) -> str:
        head = "REPRODUCED" if self.reproduced else "NOT REPRODUCED"
        claim = f"{self.claimed_result.name.lower()}/{self.claimed_reason.name.lower()}"
        return f"{head}: verdict {self.verdict_id[:16]} claims {claim}; {self.explanation}"

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "verdict_id": self.verdict_id,
            "reproduced": self.reproduced,
            "explanation": self.explanation,
            "claimed_result": self.claimed_result.name.lower(),
            "claimed_reason": self.claimed_reason.name.lower(),
        }
        if self.recomputed is not None:
            out.update(
                recomputed_result=self.recomputed.result.name.lower(),
                recomputed_reason=self.recomputed.reason.name.lower(),
                measured=self.recomputed.measured,
                tolerance=self.recomputed.tolerance,
            )
        return out


def _evidence_from_ledger(record: dict[str, Any]) -> bytes | None:
    for source in (record, record.get("signed") or {}):
        raw = source.get("evidence")
        if isinstance(raw, str) and raw:
            return base64.b64decode(raw)
    return None


def recheck(
    verdict_id: str,
    *,
    ledger: str,
    model: str,
    openings_file: str | None = None,
    initial_peers: list[str] | None = None,
    thresholds_file: str | None = None,
    device: str = "cpu",
    node_device: str = "cpu",
) -> RecheckOutcome:
    client = LedgerClient(ledger)
    try:
        record = client.verdict(verdict_id)
        signed_verdict = SignedVerdict.from_json(record["signed"])
        if not signed_verdict.verify():
            raise ValueError("the verdict's signature does not verify")
        v = signed_verdict.verdict
        receipt = client.receipt(v.receipt_id.hex())
    finally:
        client.close()

    def outcome(ok: bool, why: str, j: Judgement | None = None) -> RecheckOutcome:
        return RecheckOutcome(verdict_id, v.result, v.reason, ok, why, j)

    if v.result == Result.UNREACHABLE:
        return outcome(
            False, "an unreachable verdict records only that the node did not answer; nothing to recompute"
        )
    evidence = Path(openings_file).read_bytes() if openings_file else _evidence_from_ledger(record)
    source = "file" if openings_file else "ledger"
    if evidence is None and initial_peers:
        from verifier.challenger import ChallengeFailure, Challenger

        with Challenger(initial_peers) as ch:
            try:
                openings = ch.challenge(receipt.receipt.model, receipt.receipt.node_key, receipt.id, v.block)
            except ChallengeFailure as exc:
                return outcome(False, f"no evidence stored and the node cannot be re-challenged: {exc}")
        evidence, source = OPENINGS + openings.to_bytes(), "fresh challenge of the node"
    if evidence is None:
        return outcome(False, "no evidence: the ledger holds none; pass --openings FILE or --initial-peers")
    if evidence_hash(evidence) != v.openings_hash:
        return outcome(False, f"evidence from the {source} does not hash to the verdict's openings_hash")
    loader = BlockLoader(model, device=device, capacity=1)
    thresholds = Thresholds.load(thresholds_file or DEFAULT_PATH)
    j = judge_evidence(receipt, evidence, loader, thresholds, device_class=node_device)
    same = (j.result, j.reason) == (v.result, v.reason)
    detail = f"recomputed {j.result.name.lower()}/{j.reason.name.lower()} from the {source}: {j.detail}"
    return outcome(same, detail, j)
