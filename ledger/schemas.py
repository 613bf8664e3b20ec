"""Request and response bodies of the HTTP API (what /docs shows)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, Field

HEX32 = r"^[0-9a-f]{64}$"
EVM_ADDRESS = r"^0x[0-9a-fA-F]{40}$"
Hex32 = Annotated[str, Field(pattern=HEX32, description="32 bytes, lowercase hex")]


class ReceiptBatch(BaseModel):
    receipts: list[Any] = Field(description="SignedReceipt.to_json() objects; a malformed one is rejected alone")


class Rejection(BaseModel):
    id: str
    reason: str


class IngestResponse(BaseModel):
    accepted: list[str]
    duplicates: list[str]
    rejected: list[Rejection]


class ReceiptPublic(BaseModel):
    id: str
    node_key: str
    client_key: str
    model: str
    block_start: int
    block_end: int
    kind: int
    batch: int
    tokens: int
    ticket_id: str
    price: int
    timestamp_ms: int
    value: int = Field(description="credits the work is worth (see README: price unit)")
    acked: bool
    ingested_ms: int
    verdict_result: int = Field(description="0 none, 1 pass, 2 fail, 3 unreachable")
    status: str = Field(description="pending | paid | failed | withheld")
    epoch: int | None


class ReceiptDetail(ReceiptPublic):
    signed: dict[str, Any] = Field(description="SignedReceipt.to_json()")
    verdicts: list[str]


class NodeInfo(BaseModel):
    key: str
    first_seen_ms: int
    receipts: int
    passes: int
    fails: int
    stake: int
    evm_address: str | None


class DueReceipt(BaseModel):
    id: str
    node_key: str
    client_key: str
    model: str
    block_start: int
    block_end: int
    kind: int
    tokens: int
    value: int
    timestamp_ms: int
    ingested_ms: int
    sample_draw: float
    signed: dict[str, Any]
    node: NodeInfo


class TicketRequest(BaseModel):
    cap: int = Field(gt=0, lt=2**62, description="credits to escrow")
    ttl_s: int = Field(gt=0, le=10**9, description="lifetime in seconds")
    node_key: Hex32 | None = Field(default=None, description="only this node may honour it; omit for any")


class VerdictPublic(BaseModel):
    id: str
    receipt_id: str
    verifier_key: str
    block: int
    result: int
    reason: int
    openings_hash: str
    tolerance: float
    measured: float
    timestamp_ms: int
    ingested_ms: int
    slash_epoch: int | None


class VerdictDetail(VerdictPublic):
    signed: dict[str, Any]
    evidence: str | None = Field(default=None, description="base64 openings the verdict was judged on")


class PostedVerdict(BaseModel):
    id: str
    new: bool


class AccountPublic(BaseModel):
    key: str
    role: str
    evm_address: str | None
    balance: int = Field(description="spendable credits")
    escrow: int = Field(description="credits locked in this client's open tickets")
    earned: int = Field(description="credits earned: work minted plus ticket income")
    slashed: int
    stake: int
    cumulative: int = Field(description="cumulative claimable on-chain as of the last epoch")
    receipts: int
    passes: int
    fails: int


class JournalLine(BaseModel):
    id: int
    txn: str
    delta: int
    kind: str
    ref: str
    epoch: int | None
    created_ms: int


class RoleGrant(BaseModel):
    key: Hex32
    role: str = Field(pattern=r"^(verifier|admin|)$", description="verifier, admin or empty to revoke")


class EpochPublic(BaseModel):
    number: int
    started_ms: int
    closed_ms: int
    receipts_paid: int
    receipts_failed: int
    work_minted: int
    ticket_spent: int
    refunded: int
    slashed: int
    root: str | None
    accounts: int
    anchor_tx: str | None
    anchor_block: int | None
    anchored_at: int | None


class EpochProof(BaseModel):
    epoch: int
    root: str
    account: str
    evm_address: str
    cumulative: int
    proof: list[str]


class ManifestPosted(BaseModel):
    manifest_hash: str
    new: bool


class LedgerKey(BaseModel):
    ledger_key: str
    price_unit: str
    flops_per_credit: int
    grace_period_s: float
    slash_multiple: int
    sample_rate: float
    epoch_minutes: float


class BindingAttestationPublic(BaseModel):
    node_key: Hex32
    operator: str = Field(pattern=EVM_ADDRESS, description="the address allowed to register node_key")
    chain_id: int
    registry: str = Field(pattern=EVM_ADDRESS, description="the NodeRegistry the attestation is for")
    attester: str = Field(pattern=EVM_ADDRESS, description="the ledger's chain key, NodeRegistry.attester()")
    signature: str = Field(description="0x + 130 hex: pass to NodeRegistry.register(nodeKey, signature)")


class CheckReport(BaseModel):
    ok: bool
    minted: int
    burned: int
    held: int
    escrow: int
    slashed: int
    accounts: int
    entries: int
    problems: list[str]


class VerifierStats(BaseModel):
    key: str
    checks: int
    passes: int
    fails: int
    unreachable: int
    by_reason: dict[str, int]


class TimelinePoint(BaseModel):
    start_ms: int
    verified_work: int = Field(description="value of receipts with a pass verdict or paid, by ingestion time")
    receipts: int
    failures: int
