"""On-chain slashing of a failed receipt: verifiers sign, anyone submits.

    corolla chain sign-slash --ledger URL --key FILE (--receipt ID | --verdict ID) [--amount N]
                             [--rpc URL] [--deployment FILE] [--json]
    corolla chain slash --rpc URL --key FILE --node KEY --receipt ID --amount N
                        --signature SIG [--signature SIG ...] [--ledger URL | --deployment FILE] [--json]

`sign-slash` is run by each verifier holding an EVM key registered in NodeRegistry. It
fetches a FAIL verdict from the ledger API (by verdict id, or the first failed verdict of a
receipt), checks the verdict's and the receipt's Ed25519 signatures and that they name each
other, takes the node key from the receipt, and signs the EIP-712 `Slash(nodeKey,
receiptId, amount)` for the registry (protocol/eip712.py). PASS or UNREACHABLE verdicts are
refused. The default amount is the ledger's `slash_multiple` × the receipt's value, a rule
every verifier computes identically from the ledger's records, so their signatures agree.
With --rpc it also checks on-chain that the node is registered, the receipt not yet slashed
and the key a registered verifier, so a useless signature is never handed out.

`slash` collects a quorum of those signatures and sends `NodeRegistry.slash`; the sender
only pays gas. Before sending it names the problem in one line: an unknown node, a receipt
already slashed, too few signatures, or a signature that does not recover to a registered
verifier for exactly these terms (node, receipt, amount, chain, registry).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx
from eth_account.signers.local import LocalAccount
from eth_utils import to_checksum_address

from ledger.chain import ZERO_ADDRESS, Chain, ChainError, Deployment, NodeRegistry, TxResult
from protocol.eip712 import SlashRequest, recover_slash_signer, sign_slash
from protocol.receipts import SignedReceipt
from protocol.verdicts import Result, SignedVerdict


class SlashError(ChainError):
    """A user-facing refusal: one line, exit code 2."""


@dataclass(frozen=True)
class FailedReceipt:
    """A FAIL verdict from the ledger, checked, with the receipt it condemns."""

    verdict: SignedVerdict
    receipt: SignedReceipt
    value: int  # credits the receipt claimed (ledger's valuation)
    slash_multiple: int  # the ledger's rule: slash = multiple × value

    @property
    def default_amount(self) -> int:
        return self.slash_multiple * self.value


@dataclass(frozen=True)
class SlashSignature:
    node_key: str
    receipt_id: str
    verdict_id: str
    amount: int
    chain_id: int
    registry: str
    signer: str
    signature: str  # 0x + 130 hex


def _hex_bytes(text: str, size: int) -> bytes | None:
    """`size` bytes from hex (0x optional), or None if it is not exactly that."""
    try:
        raw = bytes.fromhex(text.removeprefix("0x"))
    except ValueError:
        return None
    return raw if len(raw) == size else None


def _hex32(name: str, value: str) -> bytes:
    raw = _hex_bytes(value, 32)
    if raw is None:
        raise SlashError(f"{name} must be 64 hex digits, got {value!r}")
    return raw


def _get(http: httpx.Client, path: str, what: str) -> Any:
    try:
        r = http.get(path)
    except httpx.HTTPError as exc:
        raise SlashError(f"ledger {http.base_url} unreachable: {exc}") from None
    if r.status_code == 404:
        raise SlashError(f"the ledger has no {what}")
    if r.status_code != 200:
        raise SlashError(f"ledger answered {r.status_code} for {path}: {r.text[:200]}")
    return r.json()


def fetch_failed_receipt(ledger_url: str, *, receipt_id: str | None = None,
                         verdict_id: str | None = None) -> FailedReceipt:
    """The FAIL verdict `verdict_id` (or the first FAIL verdict of `receipt_id`), checked."""
    if (receipt_id is None) == (verdict_id is None):
        raise SlashError("name exactly one of a receipt id or a verdict id")
    with httpx.Client(base_url=ledger_url.rstrip("/"), timeout=30) as http:
        if verdict_id is None:
            assert receipt_id is not None
            rid = _hex32("receipt id", receipt_id).hex()
            fails = _get(http, f"/v1/verdicts?receipt={rid}&result={int(Result.FAIL)}", "such verdicts")
            if not fails:
                raise SlashError(f"receipt {rid} has no FAIL verdict on the ledger; only failed receipts are slashed")
            verdict_id = str(fails[-1]["id"])  # the oldest (listed newest first)
        vid = _hex32("verdict id", verdict_id).hex()
        detail = _get(http, f"/v1/verdicts/{vid}", f"verdict {vid}")
        try:
            verdict = SignedVerdict.from_json(detail["signed"])
        except (KeyError, ValueError, TypeError, AttributeError) as exc:
            raise SlashError(f"the ledger's verdict {vid} is malformed: {exc}") from None
        if verdict.id.hex() != vid or not verdict.verify():
            raise SlashError(f"verdict {vid} from the ledger does not carry a valid verifier signature")
        if verdict.verdict.result != Result.FAIL:
            raise SlashError(f"verdict {vid} is {verdict.verdict.result.name}, not FAIL; only failed receipts "
                             "are slashed")
        rid = verdict.verdict.receipt_id.hex()
        rec = _get(http, f"/v1/receipts/{rid}", f"receipt {rid}")
        try:
            receipt = SignedReceipt.from_json(rec["signed"])
            value = int(rec["value"])
        except (KeyError, ValueError, TypeError, AttributeError) as exc:
            raise SlashError(f"the ledger's receipt {rid} is malformed: {exc}") from None
        if receipt.id.hex() != rid or not receipt.verify_node():
            raise SlashError(f"receipt {rid} from the ledger does not carry a valid node signature")
        multiple = int(_get(http, "/v1/ledger-key", "ledger key")["slash_multiple"])
    return FailedReceipt(verdict, receipt, value, multiple)


def deployment_from_ledger(ledger_url: str) -> Deployment:
    """The contract deployment the ledger publishes at /v1/chain."""
    with httpx.Client(base_url=ledger_url.rstrip("/"), timeout=30) as http:
        data = _get(http, "/v1/chain", "chain configured (pass --deployment FILE)")
    try:
        return Deployment(**{k: data[k] for k in Deployment.__dataclass_fields__})
    except (KeyError, TypeError):
        raise SlashError("the ledger's /v1/chain is not a deployment file") from None


def _check_slashable(registry: NodeRegistry, node_key: bytes, receipt_id: bytes) -> None:
    if registry.node(node_key).operator == ZERO_ADDRESS:
        raise SlashError(f"node {node_key.hex()} is not registered in NodeRegistry {registry.deployment.registry}")
    if registry.slashed(receipt_id):
        raise SlashError(f"receipt {receipt_id.hex()} was already slashed; each receipt is slashed once")


def sign_failed_receipt(failed: FailedReceipt, account: LocalAccount, deployment: Deployment,
                        amount: int | None = None, registry: NodeRegistry | None = None) -> SlashSignature:
    """The verifier `account`'s EIP-712 slash signature for a checked failed receipt.

    With `registry` (a connected NodeRegistry), first checks that the slash can still
    happen and that `account` is one of its verifiers.
    """
    amount = failed.default_amount if amount is None else amount
    if amount <= 0:
        raise SlashError(f"the slash amount must be positive (default: slash_multiple {failed.slash_multiple} × "
                         f"receipt value {failed.value} = {failed.default_amount}); pass --amount N")
    node_key, receipt_id = failed.receipt.receipt.node_key, failed.receipt.id
    if registry is not None:
        deployment.check_chain_id(registry.chain.chain_id)
        _check_slashable(registry, node_key, receipt_id)
        if not registry.is_verifier(account.address):
            raise SlashError(f"{account.address} is not a registered verifier of NodeRegistry {deployment.registry}")
    req = SlashRequest(deployment.chain_id, deployment.registry, node_key, receipt_id, amount)
    return SlashSignature(
        node_key=node_key.hex(), receipt_id=receipt_id.hex(), verdict_id=failed.verdict.id.hex(), amount=amount,
        chain_id=deployment.chain_id, registry=deployment.registry, signer=str(account.address),
        signature="0x" + sign_slash(account.key, req).hex(),
    )


def _signature(text: str) -> bytes:
    raw = _hex_bytes(text, 65)
    if raw is None:
        raise SlashError(f"signature {text[:20]!r}... is not 65 bytes of hex (0x + 130 hex digits)")
    return raw


def submit_slash(chain: Chain, deployment: Deployment, node_key: str, receipt_id: str, amount: int,
                 signatures: list[str]) -> tuple[TxResult, int]:
    """Check the signatures against the registry, then send `slash`; (tx, stake left)."""
    registry = NodeRegistry(chain, deployment)
    deployment.check_chain_id(chain.chain_id)
    node, receipt = _hex32("node key", node_key), _hex32("receipt id", receipt_id)
    if amount <= 0:
        raise SlashError("the slash amount must be positive")
    _check_slashable(registry, node, receipt)
    req = SlashRequest(deployment.chain_id, deployment.registry, node, receipt, amount)
    signers: dict[str, bytes] = {}
    for i, text in enumerate(signatures, 1):
        sig = _signature(text)
        try:
            signer = to_checksum_address(recover_slash_signer(req, sig))
        except Exception:  # noqa: BLE001 - eth-keys raises several types for junk signatures
            raise SlashError(f"signature #{i} is not a valid ECDSA signature") from None
        if not registry.is_verifier(signer):
            raise SlashError(f"signature #{i} recovers to {signer}, not a registered verifier: it was signed for "
                             f"other terms (node, receipt, amount {amount}, chain or registry) or by a non-verifier")
        if signer in signers:
            raise SlashError(f"signatures #{i} and an earlier one are from the same verifier {signer}")
        signers[signer] = sig
    quorum = registry.quorum()
    if len(signers) < quorum:
        raise SlashError(f"{len(signers)} verifier signature(s) given; NodeRegistry needs a quorum of {quorum}")
    tx = registry.slash(node, receipt, amount, list(signers.values()))
    return tx, registry.node(node).stake
