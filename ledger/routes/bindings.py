"""Binding attestations: the ledger's chain key vouches for a node key's operator on-chain.

NodeRegistry registers a node key only with its attester's EIP-712 `Binding(nodeKey,
operator)`; this route issues it for a binding signed by both keys (ledger/registration.py).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, HTTPException

from ledger.routes.deps import ContextDep
from ledger.schemas import BindingAttestationPublic
from protocol.binding import Binding

router = APIRouter(tags=["accounts"])


@router.post("/v1/bindings/attest", response_model=BindingAttestationPublic,
             summary="Attest a dual-signed binding for NodeRegistry.register (EIP-712, the ledger's chain key)")
def attest_binding(
    ctx: ContextDep, body: Annotated[dict[str, Any], Body(description="protocol.binding.Binding.to_json()")],
) -> dict[str, Any]:
    # Imported here: eth-account and web3 cost ~1 s, paid only by a ledger that attests.
    from ledger.chain import ChainError, Deployment, load_evm_key
    from ledger.registration import RegistrationError, attest

    s = ctx.settings
    if not (s.chain_key_file and s.chain_addresses_file):
        raise HTTPException(404, "this ledger has no chain key configured (--chain-key and --chain-addresses); "
                                 "it attests no bindings")
    try:
        binding = Binding.from_json(body)
    except (ValueError, TypeError, AttributeError) as exc:
        raise HTTPException(422, f"malformed binding: {exc}") from None
    try:
        deployment = Deployment.load(s.chain_addresses_file)
        account = load_evm_key(s.chain_key_file)
    except ChainError as exc:
        raise HTTPException(503, f"the ledger's chain configuration is unusable: {exc}") from None
    try:
        return attest(binding, account, deployment).to_json()
    except RegistrationError as exc:
        raise HTTPException(422, str(exc)) from None
