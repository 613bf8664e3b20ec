"""Typed configuration of one ledger process (pydantic-settings, env prefix COROLLA_LEDGER_).

Defaults run on one machine: a SQLite file in the working directory, epochs every 10
minutes, no chain. Every field is also a `corolla ledger serve` flag.

Price unit: one credit (the smallest unit, also the token's base unit on-chain) pays for
`flops_per_credit` block-FLOPs, where a receipt's block-FLOPs are
`manifest.block_flops_per_token × tokens × (block_end − block_start)` and
`block_flops_per_token` ≈ 2 × the parameters of one block (multiply-adds of one token).
"""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="COROLLA_LEDGER_", extra="ignore")

    db_url: str = Field(default="sqlite:///corolla-ledger.db", description="SQLAlchemy URL: sqlite:///FILE or postgresql://...")
    key_file: str = Field(default=".corolla/ledger.key", description="the ledger's Ed25519 key (signs tickets)")
    epoch_minutes: float = Field(default=10.0, description="close an epoch every N minutes; 0 disables the scheduler")
    flops_per_credit: int = Field(default=1_000_000, gt=0, description="block-FLOPs paid by one credit")
    grace_period_s: float = Field(default=600.0, ge=0, description="unsampled receipts become payable this long after ingestion")
    slash_multiple: int = Field(default=2, ge=0, description="a failed verdict slashes this multiple of the node's claimed value")
    verifier_keys: list[str] = Field(default_factory=list, description="hex Ed25519 keys with the verifier role")
    admin_keys: list[str] = Field(default_factory=list, description="hex keys allowed to grant roles")
    grants: list[str] = Field(default_factory=list, description="genesis credits KEY:AMOUNT, minted once")
    sample_rate: float = Field(default=1.0, ge=0, le=1, description="share of receipts offered to verifiers by /receipts/due")
    require_client_signature: bool = Field(default=True, description="pay only receipts counter-signed by their client")
    max_skew_s: float = Field(default=300.0, gt=0, description="accepted clock skew of signed requests")
    max_batch: int = Field(default=1000, gt=0, description="most receipts in one POST")
    max_ticket_ttl_s: int = Field(default=7 * 24 * 3600, gt=0, description="longest ticket lifetime")
    verify_workers: int = Field(default=0, ge=0, description="processes verifying signatures of large batches; 0 = in-line")
    chain_rpc: str | None = Field(default=None, description="EVM JSON-RPC URL; epochs are anchored when set")
    chain_key_file: str | None = Field(default=None, description="EVM key file that posts epoch roots and "
                                          "signs NodeRegistry binding attestations")
    chain_addresses_file: str | None = Field(default=None, description="deployed contract addresses (corolla chain deploy)")
    anchor_retry_s: float = Field(default=30.0, ge=0, description="with a chain, retry posting closed but unanchored "
                                  "epochs every N seconds; 0 retries only at the next epoch close or restart")

    @property
    def verifier_key_bytes(self) -> set[bytes]:
        return {bytes.fromhex(k) for k in self.verifier_keys}

    @property
    def admin_key_bytes(self) -> set[bytes]:
        return {bytes.fromhex(k) for k in self.admin_keys}

    def parsed_grants(self) -> list[tuple[bytes, int]]:
        """`KEY:AMOUNT` strings as (32-byte key, amount); ValueError names the bad one."""
        out = []
        for g in self.grants:
            key_hex, _, amount = g.partition(":")
            try:
                key = bytes.fromhex(key_hex)
                value = int(amount)
            except ValueError:
                raise ValueError(f"grant {g!r} is not KEY:AMOUNT (hex key, integer amount)") from None
            if len(key) != 32 or value <= 0:
                raise ValueError(f"grant {g!r} needs a 32-byte hex key and a positive amount")
            out.append((key, value))
        return out
