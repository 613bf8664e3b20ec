"""The verifier loop: pull due receipts, check, challenge, recompute, post signed verdicts.

Per receipt, cheapest first: receipt-only checks (replay, chaining with neighbours'
receipts), then the challenge for one secret-random block's openings, the commitment
checks, and finally the recomputation. Every verdict is written to the local state
before it is posted, so a crash anywhere re-posts the same verdict instead of judging
the receipt twice (see verifier/state.py).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from protocol.identity import Identity
from protocol.receipts import SignedReceipt
from protocol.verdicts import Reason, Result, SignedVerdict, Verdict
from verifier.challenger import ChallengeFailure, Challenger
from verifier.judge import Judgement, judge_openings, judge_receipt_only
from verifier.ledger_client import LedgerClient, LedgerError
from verifier.recompute import BlockLoader
from verifier.sampling import SamplingPolicy, challenged_block, mean_value
from verifier.state import VerifierState
from verifier.tolerance import DEFAULT_PATH, Thresholds

logger = logging.getLogger("corolla.verifier")
NEIGHBOUR_WINDOW_MS = 120_000


@dataclass
class ServiceConfig:
    ledger: str
    model: str
    key_file: str
    initial_peers: list[str] = field(default_factory=list)
    sample_rate: float = 0.05
    device: str = "cpu"
    thresholds_file: str | None = None
    state_file: str | None = None
    challenge_timeout_s: float = 10.0
    unreachable_limit: int = 3
    poll_s: float = 2.0
    batch: int = 50
    once: bool = False
    ready_file: str | None = None
    node_device: str = "cpu"  # device class assumed when a node does not announce one
    block_cache: int = 4


@dataclass
class Stats:
    checked: int = 0
    passed: int = 0
    failed: int = 0
    unreachable: int = 0
    reposted: int = 0
    compute_s: float = 0.0


class Verifier:
    """One verifier identity checking one model's receipts."""

    def __init__(
        self,
        config: ServiceConfig,
        identity: Identity,
        ledger: LedgerClient,
        challenger: Challenger | None,
        state: VerifierState,
        loader: BlockLoader | None = None,
        thresholds: Thresholds | None = None,
    ):
        self.config = config
        self.identity = identity
        self.ledger = ledger
        self.challenger = challenger
        self.state = state
        self.loader = loader or BlockLoader(config.model, device=config.device, capacity=config.block_cache)
        self.thresholds = thresholds or Thresholds.load(config.thresholds_file or DEFAULT_PATH)
        self.policy = SamplingPolicy(base_rate=config.sample_rate)
        self.model_hash = self.loader.manifest_hash
        self.secret = state.secret()
        self.stats = Stats()

    # ----- one pass over the ledger's queue ------------------------------------------------
    def repost_pending(self) -> int:
        """Post verdicts recorded before a crash but never acknowledged by the ledger."""
        done = 0
        for stored in self.state.unposted():
            if self._post(SignedVerdict.from_json(json.loads(stored.signed_json)), stored.evidence):
                done += 1
        self.stats.reposted += done
        return done

    def due_receipts(self) -> list[dict[str, Any]]:
        """Due receipts of this model, each node at its own sampling rate, oldest first."""
        nodes = self.ledger.nodes()
        avg = mean_value(nodes)
        due: list[dict[str, Any]] = []
        for node in nodes:
            rate = self.policy.node_rate(node, avg)
            if rate <= 0:
                continue
            due += self.ledger.due(rate=rate, node=node["key"], limit=self.config.batch)
        due = [d for d in due if d["model"] == self.model_hash.hex()]
        return sorted(due, key=lambda d: (d["ingested_ms"], d["id"]))

    def poll_once(self) -> int:
        """Judge everything due now; returns how many receipts were judged."""
        self.repost_pending()
        due = [SignedReceipt.from_json(item["signed"]) for item in self.due_receipts()]
        for signed in due:  # index first: a replay is caught even if judged before its original
            self.state.remember(signed)
        for signed in due:
            self.check(signed)
        return len(due)

    # ----- one receipt -------------------------------------------------------------------
    def check(self, signed: SignedReceipt) -> SignedVerdict:
        """Judge one receipt and post the verdict (or re-post the one already recorded)."""
        stored = self.state.verdict_for(signed.id)
        if stored is not None:
            verdict = SignedVerdict.from_json(json.loads(stored.signed_json))
            if not stored.posted:
                self._post(verdict, stored.evidence)
            return verdict
        self.state.remember(signed)
        block = challenged_block(self.secret, signed.receipt)
        judgement = self._judge(signed, block)
        verdict = Verdict(
            receipt_id=signed.id,
            verifier_key=self.identity.public_key,
            block=block,
            result=judgement.result,
            reason=judgement.reason,
            openings_hash=judgement.evidence_hash,
            tolerance=judgement.tolerance,
            measured=judgement.measured,
            timestamp_ms=int(time.time() * 1000),
        ).sign(self.identity)
        self.state.save_verdict(signed.id, verdict.id, json.dumps(verdict.to_json()), judgement.evidence)
        self._count(judgement)
        logger.info(
            "receipt %s node %s blocks %d:%d block %d: %s %s (%s)",
            signed.id.hex()[:12],
            signed.receipt.node_key.hex()[:12],
            signed.receipt.block_start,
            signed.receipt.block_end,
            block,
            judgement.result.name.lower(),
            judgement.reason.name.lower(),
            judgement.detail,
        )
        self._post(verdict, judgement.evidence)
        return verdict

    def _judge(self, signed: SignedReceipt, block: int) -> Judgement:
        r = signed.receipt
        earlier = [e for e in self.state.with_output(r.output_hash) if e.id != signed.id]
        found = judge_receipt_only(signed, earlier, self._neighbours(signed))
        if found is not None:
            return found
        if self.challenger is None:
            return self._unreachable(r.node_key, "no P2P connection configured")
        try:
            openings = self.challenger.challenge(r.model, r.node_key, signed.id, block)
        except ChallengeFailure as exc:
            return self._unreachable(r.node_key, str(exc))
        self.state.answered(r.node_key)
        if openings.block != block:
            return Judgement(
                Result.FAIL, Reason.MALFORMED, f"asked for block {block}, node opened {openings.block}"
            )
        history = self.state.in_session(r.session_id)
        return judge_openings(
            r, openings, self.loader, self.thresholds, history=history, device_class=self.config.node_device
        )

    def _unreachable(self, node_key: bytes, why: str) -> Judgement:
        misses = self.state.missed(node_key)
        if misses >= self.config.unreachable_limit:
            return Judgement(
                Result.FAIL,
                Reason.UNREACHABLE,
                f"{misses} challenges in a row unanswered (limit {self.config.unreachable_limit}): {why}",
            )
        return Judgement(Result.UNREACHABLE, Reason.UNREACHABLE, why)

    def _neighbours(self, signed: SignedReceipt) -> list[SignedReceipt]:
        """Receipts of the same client whose block span touches this one, near in time."""
        r = signed.receipt
        try:
            listed = self.ledger.receipts_of_client(r.client_key.hex())
        except LedgerError as exc:
            logger.warning("cannot list neighbour receipts: %s", exc)
            return []
        out = []
        for item in listed:
            if item["id"] == signed.id.hex() or item["model"] != r.model.hex() or item["kind"] != int(r.kind):
                continue
            if item["block_end"] != r.block_start and item["block_start"] != r.block_end:
                continue
            if abs(int(item["timestamp_ms"]) - r.timestamp_ms) > NEIGHBOUR_WINDOW_MS:
                continue
            try:
                n = self.ledger.receipt(item["id"])
            except (LedgerError, ValueError):
                continue
            if (n.receipt.session_id, n.receipt.step) == (r.session_id, r.step):
                self.state.remember(n)
                out.append(n)
        return out

    def _post(self, verdict: SignedVerdict, evidence: bytes) -> bool:
        try:
            self.ledger.post_verdict(verdict, evidence)
        except LedgerError as exc:
            logger.warning("verdict %s not posted yet: %s", verdict.id.hex()[:12], exc)
            return False
        self.state.mark_posted(verdict.verdict.receipt_id)
        return True

    def _count(self, j: Judgement) -> None:
        self.stats.checked += 1
        self.stats.compute_s += j.compute_s
        if j.result == Result.PASS:
            self.stats.passed += 1
        elif j.result == Result.FAIL:
            self.stats.failed += 1
        else:
            self.stats.unreachable += 1


def default_state_path(identity: Identity) -> Path:
    return Path(f"~/.corolla/verifier-{identity.public_hex[:16]}.sqlite").expanduser()


def run_service(config: ServiceConfig) -> int:
    """`corolla verifier run`: loop until interrupted (or one pass with --once)."""
    identity = Identity.load_or_create(config.key_file)
    if not Path(config.model).exists() and "/" not in config.model:
        raise FileNotFoundError(f"model {config.model} not found (give a model directory or a hub name)")
    state = VerifierState(config.state_file or default_state_path(identity))
    ledger = LedgerClient(config.ledger, identity)
    challenger = (
        Challenger(config.initial_peers, timeout_s=config.challenge_timeout_s)
        if config.initial_peers
        else None
    )
    try:
        verifier = Verifier(config, identity, ledger, challenger, state)
        if config.ready_file:
            Path(config.ready_file).write_text(
                json.dumps({"verifier_key": identity.public_hex, "ledger": config.ledger})
            )
        logger.info(
            "verifier %s checking model %s at base rate %.3f",
            identity.public_hex[:16],
            verifier.model_hash.hex()[:16],
            config.sample_rate,
        )
        while True:
            try:
                n = verifier.poll_once()
            except LedgerError as exc:
                logger.warning("ledger: %s", exc)
                n = 0
            if config.once:
                s = verifier.stats
                print(
                    json.dumps(
                        {
                            "checked": s.checked,
                            "passed": s.passed,
                            "failed": s.failed,
                            "unreachable": s.unreachable,
                            "reposted": s.reposted,
                        }
                    )
                )
                return 0
            if n == 0:
                time.sleep(config.poll_s)
    except KeyboardInterrupt:
        return 0
    finally:
        if challenger is not None:
            challenger.close()
        ledger.close()
        state.close()
