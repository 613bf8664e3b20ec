"""The verifier loop: pull due receipts, check, challenge, recompute, post signed verdicts.

Per receipt, cheapest first: receipt-only checks (replay, chaining with neighbours'
receipts), then the challenge for one secret-random block's openings, the commitment
checks, and finally the recomputation. Every verdict is written to the local state
before it is posted, so a crash anywhere re-posts the same verdict instead of judging
the receipt twice (see verifier/state.py).

Forward and backward receipts are checked as soon as they are due. Sampled decode steps
(inference receipts) wait until their session looks over: no receipt of that node for
that client for `session_quiet_s`, or `session_max_wait_s` after the oldest one, which
stays well inside the ledger's grace period (receipts with no verdict are paid after
it) and the nodes' openings retention (`corolla node --retention-s`). Then the session's
due receipts are recorded as its members, opened together at the session's one block
and judged in step order, sharing the prefix's keys/values or, on narrow blocks, one
layer call for all of them (`_open_session`; verifier/sampling.py says why this is safe
and what it trades). A last pass (`--once`) checks every session without waiting.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from protocol.identity import Identity
from protocol.receipts import SignedReceipt
from protocol.verdicts import Reason, Result, SignedVerdict, Verdict
from verifier.challenger import ChallengeFailure, Challenger
from verifier.judge import Judgement, judge_openings, judge_receipt_only
from verifier.ledger_client import LedgerClient, LedgerError
from verifier.openings import Openings
from verifier.recompute import BlockLoader, extend_session_rows
from verifier.sampling import (
    SamplingPolicy,
    challenged_block,
    is_session_receipt,
    mean_value,
    session_block,
)
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
    session_quiet_s: float = 30.0  # a session is over when its node got no receipt from its client this long
    session_max_wait_s: float = 300.0  # ...or this long after its oldest sampled receipt (< ledger grace)


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
        self.clock = time.time  # seconds; compared with the ledger's ingested_ms
        self._held: dict[str, int] = {}  # node key hex -> receipts of open sessions held back
        self._first_seen: dict[bytes, float] = {}  # held receipt id -> our clock when first due
        self._opened: dict[bytes, Openings | ChallengeFailure] = {}  # session members challenged ahead

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
            limit = min(1000, self.config.batch + self._held.get(node["key"], 0))  # held ones come first
            due += self.ledger.due(rate=rate, node=node["key"], limit=limit)
        due = [d for d in due if d["model"] == self.model_hash.hex()]
        return sorted(due, key=lambda d: (d["ingested_ms"], d["id"]))

    def poll_once(self, *, final: bool = False) -> int:
        """Judge everything due now, except decode steps of sessions that may still be
        running (module docstring), or everything with `final` (a last pass, `--once`:
        a session still running is checked now, its later steps on their own blocks);
        returns how many receipts were judged."""
        self.repost_pending()
        due = [
            (SignedReceipt.from_json(item["signed"]), int(item["ingested_ms"]))
            for item in self.due_receipts()
        ]
        for signed, _ in due:  # index first: a replay is caught even if judged before its original
            self.state.remember(signed)
        now, judged = self.clock() * 1000, 0
        sessions: dict[tuple[bytes, bytes], list[tuple[SignedReceipt, int]]] = {}
        for signed, ingested in due:
            r = signed.receipt
            if is_session_receipt(r):
                sessions.setdefault((r.node_key, r.session_id), []).append((signed, ingested))
            else:
                self.check(signed)
                judged += 1
        self._held, first_seen, self._first_seen = {}, self._first_seen, {}
        quiet: dict[tuple[bytes, bytes], bool] = {}  # (node, client) -> no receipt for session_quiet_s
        for (node_key, session_id), group in sessions.items():
            if self.state.session_closed(node_key, session_id) or self._close_if_over(
                node_key, session_id, group, now, first_seen, quiet, final
            ):
                judged += self._check_session(group)
        return judged

    def _close_if_over(
        self,
        node_key: bytes,
        session_id: bytes,
        group: list[tuple[SignedReceipt, int]],
        now: float,
        first_seen: dict[bytes, float],
        quiet: dict[tuple[bytes, bytes], bool],
        final: bool,
    ) -> bool:
        """Record the session's due receipts as its members if it looks over (or `final`);
        else hold them back for a later pass and return False."""
        client_key = group[0][0].receipt.client_key
        if (node_key, client_key) not in quiet:
            quiet[(node_key, client_key)] = self._pair_quiet(node_key, client_key, now)
        # by the ledger's clock or by ours, whichever says longer: a verifier clock
        # behind the ledger's cannot hold a session past the ledger's grace period
        seen = [first_seen.get(s.id, now) for s, _ in group]
        waited_s = (now - min(min(ingested for _, ingested in group), *seen)) / 1000
        busy = not quiet[(node_key, client_key)] and waited_s < self.config.session_max_wait_s
        if busy and not final:
            self._first_seen.update((s.id, t) for (s, _), t in zip(group, seen, strict=True))
            self._held[node_key.hex()] = self._held.get(node_key.hex(), 0) + len(group)
            return False
        members = self.state.close_session(node_key, session_id, [s.id for s, _ in group])
        logger.info(
            "session %s node %s: checking %d sampled steps (%d due) after %.0f s",
            session_id.hex()[:12],
            node_key.hex()[:12],
            len(members),
            len(group),
            waited_s,
        )
        return True

    def _check_session(self, group: list[tuple[SignedReceipt, int]]) -> int:
        """Judge a closed session's due receipts in step order (each check extends what the
        last one held); returns how many were judged."""
        ordered = [signed for signed, _ in sorted(group, key=lambda g: (g[0].receipt.step, g[0].id))]
        self._open_session(ordered)
        try:
            for signed in ordered:
                self.check(signed)
        finally:
            self._opened.clear()
        return len(ordered)

    def _open_session(self, ordered: list[SignedReceipt]) -> None:
        """Challenge the session members still to judge, all at once (their commitments are
        fixed: verifier/sampling.py), and where it is cheaper have their block's rows
        computed in one layer call (`recompute.extend_session_rows`); `_judge` then uses
        these openings instead of challenging again."""
        todo = [
            s for s in ordered if self.state.verdict_for(s.id) is None and self.state.is_session_member(s.id)
        ]
        if self.challenger is None or len(todo) < 2:
            return
        opened: list[Openings] = []
        for signed in todo:
            r, block = signed.receipt, self.block_for(signed)
            try:
                self._opened[signed.id] = self.challenger.challenge(r.model, r.node_key, signed.id, block)
            except ChallengeFailure as exc:
                self._opened[signed.id] = exc
                continue
            op = self._opened[signed.id]
            if isinstance(op, Openings) and op.block == block and op.output.dtype == torch.float32:
                opened.append(op)
        if len(opened) < 2:
            return
        r, last = todo[0].receipt, max(opened, key=lambda op: int(op.inputs.shape[1]))
        first = min(int(op.inputs.shape[1] - op.output.shape[1]) for op in opened)
        started = time.perf_counter()
        # the session key judge_openings gives the loader for an inference receipt
        extend_session_rows(
            self.loader, last.block, last.inputs, first, len(opened), session=r.node_key + r.session_id
        )
        self.stats.compute_s += time.perf_counter() - started

    def _pair_quiet(self, node_key: bytes, client_key: bytes, now_ms: float) -> bool:
        """Whether the ledger got no receipt of this node for this client for session_quiet_s."""
        try:
            last = self.ledger.last_ingested_ms(node_key.hex(), client_key.hex())
        except LedgerError as exc:
            logger.warning("cannot tell whether node %s is still serving: %s", node_key.hex()[:12], exc)
            return False
        return last is None or now_ms - last >= self.config.session_quiet_s * 1000

    def block_for(self, signed: SignedReceipt) -> int:
        """The block to open: the session's for a recorded member of a session under
        check, the receipt's own otherwise (verifier/sampling.py)."""
        r = signed.receipt
        if is_session_receipt(r) and self.state.is_session_member(signed.id):
            return session_block(self.secret, r)
        return challenged_block(self.secret, r)

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
        block = self.block_for(signed)
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
        prefetched = self._opened.pop(signed.id, None)  # by _open_session
        if self.challenger is None:
            return self._unreachable(r.node_key, "no P2P connection configured")
        try:
            if isinstance(prefetched, ChallengeFailure):
                raise prefetched
            openings = prefetched or self.challenger.challenge(r.model, r.node_key, signed.id, block)
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
                n = verifier.poll_once(final=config.once)
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
