"""Turn evidence about one receipt into a result, the same way for the service and recheck.

Evidence is bytes so a verdict can commit to it (`openings_hash`) and anyone holding it
can recompute the verdict:

    b"O" + openings blob          the node's openings of the challenged block
    b"R" + earlier signed receipt  a replay: same output, different input, earlier receipt
    b"C" + neighbour signed receipt  a chain break with an acknowledged neighbour
    b""                             no answer (unreachable): nothing to recompute
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from dataclasses import dataclass

from protocol.receipts import Kind, Receipt, SignedReceipt
from protocol.tensor_hash import dtype_name
from protocol.verdicts import Reason, Result, openings_hash
from verifier.checks import Finding, check_chain, check_openings, check_replay
from verifier.openings import Openings
from verifier.precision import lower_precision_score
from verifier.recompute import BlockLoader, Comparison, compare_block
from verifier.tolerance import Thresholds

OPENINGS, REPLAY, CHAIN = b"O", b"R", b"C"
MAX_MEASURED = 1e300  # a verdict's `measured` must be finite


@dataclass(frozen=True)
class Judgement:
    result: Result
    reason: Reason
    detail: str
    evidence: bytes = b""
    measured: float = 0.0
    tolerance: float = 0.0
    compute_s: float = 0.0

    @property
    def evidence_hash(self) -> bytes:
        return evidence_hash(self.evidence)


def evidence_hash(evidence: bytes) -> bytes:
    """The verdict's openings_hash (protocol.verdicts.openings_hash)."""
    return openings_hash(evidence)


def _fail(finding: Finding, evidence: bytes) -> Judgement:
    return Judgement(Result.FAIL, finding.reason, finding.detail, evidence)


def judge_receipt_only(
    signed: SignedReceipt, earlier: Iterable[SignedReceipt], neighbours: Iterable[SignedReceipt]
) -> Judgement | None:
    """Replay and chain checks (no node contact, no compute); None when both pass."""
    for e in earlier:
        finding = check_replay(signed.receipt, [e.receipt])
        if finding:
            return _fail(finding, REPLAY + e.to_bytes())
    for n in neighbours:
        finding = check_chain(signed, [n])
        if finding:
            return _fail(finding, CHAIN + n.to_bytes())
    return None


def judge_openings(
    receipt: Receipt,
    openings: Openings,
    loader: BlockLoader,
    thresholds: Thresholds,
    *,
    history: Iterable[Receipt] = (),
    device_class: str | None = None,
) -> Judgement:
    """Commitment checks, then recomputation of the block against the calibrated bound."""
    evidence = OPENINGS + openings.to_bytes()
    finding = check_openings(receipt, openings, history)
    if finding:
        return _fail(finding, evidence)
    session = receipt.node_key + receipt.session_id if receipt.kind == Kind.INFERENCE else None
    cmp = compare_block(
        loader,
        thresholds,
        openings.block,
        openings.inputs,
        openings.output,
        device_class=device_class,
        session=session,
    )
    measured = cmp.measured if math.isfinite(cmp.measured) else MAX_MEASURED
    if cmp.ok:
        return _judge_precision(
            openings, loader, thresholds, cmp, evidence, device_class=device_class, session=session
        ) or Judgement(
            Result.PASS,
            Reason.NONE,
            "recomputed block within tolerance",
            evidence,
            measured,
            cmp.tolerance,
            cmp.compute_s,
        )
    return Judgement(
        Result.FAIL,
        Reason.OUTPUT_MISMATCH,
        f"block {openings.block} output differs from recomputation: {cmp.measured:.3g} > {cmp.tolerance:.3g}",
        evidence,
        measured,
        cmp.tolerance,
        cmp.compute_s,
    )


def _judge_precision(
    openings: Openings,
    loader: BlockLoader,
    thresholds: Thresholds,
    cmp: Comparison,
    evidence: bytes,
    *,
    device_class: str | None,
    session: bytes | None,
) -> Judgement | None:
    """The lower-precision test (verifier/precision.py) where the class calibrated one and
    the divergence is large enough for int8 weights (an honest float32 node never pays for
    it): a FAIL when the output carries more of int8's error than the bound, else None.
    A FAIL records the share as the verdict's `measured` and its bound as `tolerance`."""
    dtype = dtype_name(openings.output.dtype)
    th = thresholds.lookup(dtype, device_class)
    if th.precision_bound <= 0.0 or cmp.measured <= th.precision_min_divergence:
        return None  # a tight bound excludes int8 already, or the output is too close for it
    started = time.perf_counter()
    score = lower_precision_score(
        loader,
        openings.block,
        openings.inputs,
        openings.output,
        cmp.reference,
        session=session,
        seed=evidence,
    )
    compute_s = cmp.compute_s + time.perf_counter() - started
    if not score.fails(th.precision_bound, th.precision_min_z):
        return None
    measured = score.share if math.isfinite(score.share) else MAX_MEASURED
    return Judgement(
        Result.FAIL,
        Reason.OUTPUT_MISMATCH,
        f"block {openings.block} output carries {score.share:.2f} of the error of int8 weights "
        f"(bound {th.precision_bound:.2f}; z {score.z:.1f} > {th.precision_min_z:.1f}): "
        f"computed at lower precision than its announced {dtype}",
        evidence,
        measured,
        th.precision_bound,
        compute_s,
    )


def judge_evidence(
    signed: SignedReceipt,
    evidence: bytes,
    loader: BlockLoader,
    thresholds: Thresholds,
    *,
    history: Iterable[Receipt] = (),
    device_class: str | None = None,
) -> Judgement:
    """Recompute a judgement from stored evidence (what `recheck` runs)."""
    tag, body = evidence[:1], evidence[1:]
    if tag == OPENINGS:
        return judge_openings(
            signed.receipt,
            Openings.from_bytes(body),
            loader,
            thresholds,
            history=history,
            device_class=device_class,
        )
    if tag in (REPLAY, CHAIN):
        other = SignedReceipt.from_bytes(body)
        if not other.verify_node():
            raise ValueError("evidence receipt does not carry a valid node signature")
        found = judge_receipt_only(signed, [other] if tag == REPLAY else [], [other] if tag == CHAIN else [])
        return found or Judgement(Result.PASS, Reason.NONE, "receipt-only checks pass", evidence)
    raise ValueError(
        "no evidence to recompute (an unreachable verdict records only that the node did not answer)"
    )
