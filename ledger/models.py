"""Tables of the ledger (SQLModel). Keys and ids are lowercase hex; amounts are integer credits.

Balances are never stored: they are sums over `JournalEntry.delta` (see journal.py). The
rows here record facts (receipts, verdicts, tickets, epochs) and the journal records money.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, LargeBinary, Text
from sqlmodel import Field, SQLModel

SYSTEM_ACCOUNTS = ("mint", "burn", "escrow", "slash", "onchain")


class SchemaVersion(SQLModel, table=True):
    version: int = Field(primary_key=True)
    applied_ms: int = Field(sa_type=BigInteger)


class Account(SQLModel, table=True):
    key: str = Field(primary_key=True, max_length=64)  # hex Ed25519 key, or a system account name
    role: str = Field(default="", max_length=16)  # "", "verifier", "admin"
    evm_address: str | None = Field(default=None, unique=True, max_length=42)  # EIP-55, bound for good
    binding: str | None = Field(default=None, sa_column=Column(Text))
    stake: int = Field(default=0, sa_type=BigInteger)
    cumulative: int = Field(default=0, sa_type=BigInteger)  # claimable on-chain, monotonic
    created_ms: int = Field(sa_type=BigInteger)


class Manifest(SQLModel, table=True):
    hash: str = Field(primary_key=True, max_length=64)
    name: str = Field(default="", max_length=200)
    num_blocks: int
    block_flops_per_token: int = Field(sa_type=BigInteger)
    body: str = Field(sa_column=Column(Text, nullable=False))
    created_ms: int = Field(sa_type=BigInteger)


class Receipt(SQLModel, table=True):
    id: str = Field(primary_key=True, max_length=64)
    node_key: str = Field(index=True, max_length=64)
    client_key: str = Field(index=True, max_length=64)
    model: str = Field(max_length=64)
    block_start: int
    block_end: int
    kind: int
    batch: int = Field(sa_type=BigInteger)
    tokens: int = Field(sa_type=BigInteger)
    ticket_id: str = Field(default="", index=True, max_length=64)  # "" = free
    price: int = Field(default=0, sa_type=BigInteger)
    timestamp_ms: int = Field(sa_type=BigInteger)
    value: int = Field(sa_type=BigInteger)  # credits this work is worth (config price unit)
    acked: bool = False
    ingested_ms: int = Field(sa_type=BigInteger, index=True)
    sample_draw: float = 0.0  # uniform [0,1): offered to verifiers when below the sample rate
    verdict_result: int = Field(default=0, index=True)  # 0 none, 1 pass, 2 fail, 3 unreachable
    status: str = Field(default="pending", index=True, max_length=12)  # pending|paid|failed|withheld
    epoch: int | None = Field(default=None, index=True)
    raw: bytes = Field(sa_column=Column(LargeBinary, nullable=False))  # SignedReceipt.to_bytes()


class Verdict(SQLModel, table=True):
    id: str = Field(primary_key=True, max_length=64)
    receipt_id: str = Field(index=True, max_length=64)
    verifier_key: str = Field(index=True, max_length=64)
    block: int
    result: int
    reason: int
    openings_hash: str = Field(max_length=64)
    tolerance: float
    measured: float
    timestamp_ms: int = Field(sa_type=BigInteger)
    ingested_ms: int = Field(sa_type=BigInteger, index=True)
    slash_epoch: int | None = Field(default=None, index=True)  # epoch that applied its slash
    body: str = Field(sa_column=Column(Text, nullable=False))  # SignedVerdict.to_json()


class VerdictEvidence(SQLModel, table=True):
    """The openings a verdict was judged on (base64), so anyone can recheck it from here."""

    verdict_id: str = Field(primary_key=True, max_length=64)
    evidence: str = Field(sa_column=Column(Text, nullable=False))


class JournalEntry(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    txn: str = Field(index=True, max_length=32)
    account: str = Field(index=True, max_length=64)
    delta: int = Field(sa_type=BigInteger)  # + credit to account, - debit
    kind: str = Field(max_length=16)  # grant|work|escrow|spend|refund|slash|burn
    ref: str = Field(default="", index=True, max_length=200)
    epoch: int | None = Field(default=None, index=True)
    created_ms: int = Field(sa_type=BigInteger)


class Ticket(SQLModel, table=True):
    id: str = Field(primary_key=True, max_length=64)
    client_key: str = Field(index=True, max_length=64)
    node_key: str = Field(default="", max_length=64)  # "" = any node
    cap: int = Field(sa_type=BigInteger)
    expiry_ms: int = Field(sa_type=BigInteger)
    spent: int = Field(default=0, sa_type=BigInteger)
    refunded: int = Field(default=0, sa_type=BigInteger)
    status: str = Field(default="open", index=True, max_length=8)  # open|closed
    created_ms: int = Field(sa_type=BigInteger)
    body: str = Field(sa_column=Column(Text, nullable=False))  # SignedTicket.to_json()


class Epoch(SQLModel, table=True):
    number: int = Field(primary_key=True)
    started_ms: int = Field(sa_type=BigInteger)
    closed_ms: int = Field(sa_type=BigInteger)
    receipts_paid: int = 0
    receipts_failed: int = 0
    work_minted: int = Field(default=0, sa_type=BigInteger)
    ticket_spent: int = Field(default=0, sa_type=BigInteger)
    refunded: int = Field(default=0, sa_type=BigInteger)
    slashed: int = Field(default=0, sa_type=BigInteger)
    root: str | None = Field(default=None, max_length=66)
    accounts: int = 0  # leaves in the balance tree
    anchor_tx: str | None = Field(default=None, max_length=66)
    anchor_block: int | None = Field(default=None, sa_type=BigInteger)
    anchored_at: int | None = Field(default=None, sa_type=BigInteger)


class EpochBalance(SQLModel, table=True):
    """One leaf of an epoch's balance tree: what `evm_address` may claim cumulatively."""

    epoch: int = Field(primary_key=True)
    evm_address: str = Field(primary_key=True, max_length=42)
    account: str = Field(max_length=64)
    cumulative: int = Field(sa_type=BigInteger)


class Nonce(SQLModel, table=True):
    key: str = Field(primary_key=True, max_length=64)
    nonce: str = Field(primary_key=True, max_length=64)
    timestamp_ms: int = Field(sa_type=BigInteger, index=True)
