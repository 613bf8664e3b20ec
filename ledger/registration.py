"""Registering a node key in NodeRegistry: the ledger attests the binding, the operator sends.

    corolla chain register --ledger URL --rpc URL --key EVMKEY --node-key NODEKEYFILE
                           [--deployment FILE] [--json]

NodeRegistry cannot check Ed25519 signatures, so it registers a node key only with an
EIP-712 `Binding(nodeKey, operator)` signed by its attester (protocol/eip712.py). The ledger
is that attester, with its --chain-key: `POST /v1/bindings/attest` takes the binding
message signed by both the node's Ed25519 key and the operator's EVM key
(protocol/binding.py), checks both signatures, and answers the attestation for the
registry of the deployment it reads with --chain-addresses (`attest`). Only the bound
address can use it (`register` checks it for msg.sender), so nobody can register a key that
did not sign a binding to them, and copying someone's attestation is useless.

`register_node` is the operator's side: build the binding with both keys, get the
attestation, check it names this chain, registry, key and address and that the registry's
attester is the ledger's key, then send `register`. Each refusal is one line.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import httpx
from eth_account.signers.local import LocalAccount
from eth_utils import to_checksum_address

from ledger.chain import ZERO_ADDRESS, Chain, ChainError, Deployment, NodeRegistry, TxResult
from protocol.binding import Binding, make_binding, verify_binding
from protocol.eip712 import BindingAttestation, recover_binding_signer, sign_binding
from protocol.identity import Identity


class RegistrationError(ChainError):
    """A user-facing refusal: one line, exit code 2."""


@dataclass(frozen=True)
class Attestation:
    """The attester's `Binding` signature, with the terms it was signed for."""

    node_key: str  # 64 hex digits
    operator: str  # checksummed EVM address allowed to register the key
    chain_id: int
    registry: str
    attester: str
    signature: str  # 0x + 130 hex

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Any) -> Attestation:
        try:
            return cls(**{k: data[k] for k in cls.__dataclass_fields__})
        except (KeyError, TypeError):
            raise RegistrationError("the ledger's attestation is not an attestation object") from None

    def terms(self) -> BindingAttestation:
        return BindingAttestation(self.chain_id, self.registry, bytes.fromhex(self.node_key), self.operator)

    def signature_bytes(self) -> bytes:
        return bytes.fromhex(self.signature.removeprefix("0x"))


def attest(binding: Binding, attester: LocalAccount, deployment: Deployment) -> Attestation:
    """The attester's signature letting `binding.evm_address` register `binding.ed25519_key`
    in `deployment`'s registry; RegistrationError unless both binding signatures verify."""
    if not verify_binding(binding):
        raise RegistrationError("binding signatures do not verify: the node key and the EVM key must both sign "
                                "the binding message (protocol/binding.py)")
    terms = BindingAttestation(deployment.chain_id, deployment.registry, binding.ed25519_key, binding.evm_address)
    return Attestation(
        node_key=binding.ed25519_key.hex(), operator=to_checksum_address(binding.evm_address),
        chain_id=deployment.chain_id, registry=deployment.registry, attester=str(attester.address),
        signature="0x" + sign_binding(attester.key, terms).hex(),
    )


def request_attestation(ledger_url: str, binding: Binding) -> Attestation:
    """POST `binding` to the ledger's /v1/bindings/attest; RegistrationError names a refusal."""
    try:
        with httpx.Client(base_url=ledger_url.rstrip("/"), timeout=30) as http:
            r = http.post("/v1/bindings/attest", json=binding.to_json())
    except httpx.HTTPError as exc:
        raise RegistrationError(f"ledger {ledger_url} unreachable: {exc}") from None
    if r.status_code != 200:
        try:
            detail = r.json().get("detail", r.text)
        except ValueError:
            detail = r.text
        raise RegistrationError(f"the ledger refused to attest the binding ({r.status_code}): {str(detail)[:200]}")
    return Attestation.from_json(r.json())


def check_attestation(att: Attestation, registry: NodeRegistry, node_key: bytes) -> None:
    """The attestation is for this key, this sender, this chain and registry, and signed by
    the registry's attester; the key is free. RegistrationError otherwise."""
    chain, deployment = registry.chain, registry.deployment
    deployment.check_chain_id(chain.chain_id)
    if (att.node_key, att.operator, att.chain_id, att.registry.lower()) != (
            node_key.hex(), to_checksum_address(chain.address), deployment.chain_id, deployment.registry.lower()):
        raise RegistrationError(f"the attestation is for key {att.node_key}, operator {att.operator} on chain "
                                f"{att.chain_id} registry {att.registry}, not for this registration")
    try:
        signer = recover_binding_signer(att.terms(), att.signature_bytes())
    except Exception:  # noqa: BLE001 - eth-keys raises several types for junk signatures
        raise RegistrationError("the ledger's attestation is not a valid signature") from None
    on_chain = registry.attester()
    if on_chain == ZERO_ADDRESS:
        raise RegistrationError(f"NodeRegistry {deployment.registry} has no attester yet: its owner must call "
                                "setAttester (corolla chain deploy does)")
    if signer != on_chain:
        raise RegistrationError(f"the attestation is signed by {signer}, but NodeRegistry's attester is {on_chain}: "
                                "ask the ledger whose chain key is the attester")
    operator = registry.node(node_key).operator
    if operator != ZERO_ADDRESS:
        whom = "this address" if operator == to_checksum_address(chain.address) else operator
        raise RegistrationError(f"node key {node_key.hex()} is already registered to {whom}")


def register_node(chain: Chain, deployment: Deployment, node: Identity, ledger_url: str) -> tuple[TxResult,
                                                                                                Attestation]:
    """Bind `node` to `chain`'s account, get the ledger's attestation, send `register`."""
    binding = make_binding(node, chain.account.key)
    att = request_attestation(ledger_url, binding)
    registry = NodeRegistry(chain, deployment)
    check_attestation(att, registry, node.public_key)
    return registry.register(node.public_key, att.signature_bytes()), att
