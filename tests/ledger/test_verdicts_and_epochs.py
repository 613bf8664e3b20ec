"""Verdicts, slashing and epoch balance roots on a real ledger process."""

from __future__ import annotations

import os
import time

from eth_account import Account as EthAccount

from protocol.binding import make_binding
from protocol.identity import Identity
from protocol.merkle import BalanceTree, verify_balance_proof
from protocol.verdicts import Reason, Result, Verdict
from tests.ledger.harness import make_receipt


def _verdict(verifier: Identity, receipt_id: bytes, result: Result, reason: Reason = Reason.NONE):  # type: ignore[no-untyped-def]
    return Verdict(receipt_id=receipt_id, verifier_key=verifier.public_key, block=1, result=result, reason=reason,
                   openings_hash=os.urandom(32), tolerance=1e-4, measured=0.5 if result == Result.FAIL else 1e-6,
                   timestamp_ms=int(time.time() * 1000)).sign(verifier)


def test_failed_verdict_withholds_payment_and_slashes_the_node(fresh_ledger, manifest) -> None:  # type: ignore[no-untyped-def]
    # A long grace period: only receipts that passed a verdict are paid.
    ledger = fresh_ledger("sqlite", ["--grace-s", "3600", "--slash-multiple", "2"])
    node, client = Identity.generate(), Identity.generate()
    n, v = ledger.client(node), ledger.client(ledger.verifier)
    n.post("/v1/manifests", manifest.to_json())
    receipts = [make_receipt(node, client, manifest, step=i, tokens=10) for i in range(13)]
    assert len(n.post("/v1/receipts", {"receipts": [r.to_json() for r in receipts]}).json()["accepted"]) == 13
    value = manifest.block_flops_per_token * 10 * 2 // 1_000_000

    for r in receipts[:10]:
        assert v.post("/v1/verdicts", _verdict(ledger.verifier, r.id, Result.PASS).to_json()).status_code == 200
    first = ledger.close_epoch()
    assert first["receipts_paid"] == 10 and first["work_minted"] == 10 * value
    assert n.get("/v1/receipts", node=node.public_hex, status="pending").json().__len__() == 3

    # non-verifiers and verdicts signed by someone else are refused
    stranger = Identity.generate()
    assert ledger.client(stranger).post("/v1/verdicts", _verdict(stranger, receipts[10].id, Result.FAIL)
                                        .to_json()).status_code == 403
    assert v.post("/v1/verdicts", _verdict(stranger, receipts[10].id, Result.FAIL).to_json()).status_code == 403

    bad = _verdict(ledger.verifier, receipts[12].id, Result.FAIL, Reason.OUTPUT_MISMATCH)
    assert v.post("/v1/verdicts", _verdict(ledger.verifier, receipts[10].id, Result.PASS).to_json()).json()["new"]
    assert v.post("/v1/verdicts", _verdict(ledger.verifier, receipts[11].id, Result.PASS).to_json()).json()["new"]
    assert v.post("/v1/verdicts", bad.to_json()).json() == {"id": bad.id.hex(), "new": True}
    assert v.post("/v1/verdicts", bad.to_json()).json() == {"id": bad.id.hex(), "new": False}  # stored once
    # a later pass does not wash out the failure
    v.post("/v1/verdicts", _verdict(ledger.verifier, receipts[12].id, Result.PASS).to_json())
    second = ledger.close_epoch()
    assert second["receipts_paid"] == 2 and second["receipts_failed"] == 1
    claimed = 3 * value  # two passed + one failed in this epoch
    assert second["slashed"] == 2 * claimed
    acct = n.get(f"/v1/accounts/{node.public_hex}").json()
    assert acct["balance"] == 12 * value - 2 * claimed and acct["slashed"] == 2 * claimed
    assert n.get(f"/v1/receipts/{receipts[12].id.hex()}").json()["status"] == "failed"
    assert n.get(f"/v1/verdicts/{bad.id.hex()}").json()["slash_epoch"] == second["number"]
    assert ledger.close_epoch()["slashed"] == 0  # a verdict slashes once
    stats = n.get("/v1/verifiers").json()
    mine = next(s for s in stats if s["key"] == ledger.verifier.public_hex)
    assert mine["fails"] == 1 and mine["by_reason"] == {"output_mismatch": 1} and mine["checks"] == 14
    assert n.get("/v1/check").json()["ok"]


def test_epoch_root_is_the_balance_tree_of_bound_accounts(ledger, manifest) -> None:  # type: ignore[no-untyped-def]
    nodes = [Identity.generate() for _ in range(3)]
    client = Identity.generate()
    eth = [EthAccount.create() for _ in nodes]
    for node, key in zip(nodes, eth, strict=True):
        c = ledger.client(node)
        r = c.post("/v1/accounts/bind", make_binding(node, key.key).to_json())
        assert r.status_code == 200 and r.json()["evm_address"] == key.address
    # binding someone else's key is refused, and so is moving or sharing an address
    assert ledger.client().post("/v1/accounts/bind", make_binding(nodes[0], eth[0].key).to_json()).status_code == 403
    assert ledger.client(nodes[0]).post("/v1/accounts/bind", make_binding(nodes[0], eth[1].key).to_json()
                                        ).status_code == 409
    intruder = Identity.generate()
    assert ledger.client(intruder).post("/v1/accounts/bind", make_binding(intruder, eth[0].key).to_json()
                                        ).status_code == 409
    ledger.client().post("/v1/manifests", manifest.to_json())
    for i, node in enumerate(nodes):
        batch = [make_receipt(node, client, manifest, step=s, tokens=4 * (i + 1)).to_json() for s in range(i + 1)]
        ledger.client(node).post("/v1/receipts", {"receipts": batch})
    ledger.close_epoch()  # pays the work; only withdrawn credits become claimable on-chain
    for node in nodes:
        earned = ledger.client().get(f"/v1/accounts/{node.public_hex}").json()["balance"]
        assert ledger.client(node).post("/v1/withdrawals", {"amount": earned}).status_code == 200
    assert ledger.client(intruder).post("/v1/withdrawals", {"amount": 1}).status_code == 409  # unbound
    epoch = ledger.close_epoch()
    c = ledger.client()
    leaves = []
    for key in eth:
        proof = c.get(f"/v1/epochs/latest/proof/{key.address}").json()
        assert proof["epoch"] == epoch["number"] and proof["root"] == epoch["root"]
        assert verify_balance_proof(key.address, proof["cumulative"], [bytes.fromhex(p[2:]) for p in proof["proof"]],
                                    bytes.fromhex(epoch["root"][2:]))
        leaves.append((key.address, proof["cumulative"]))
    per_token = manifest.block_flops_per_token * 2 // 1_000_000
    assert [cum for _, cum in leaves] == [per_token * 4 * (i + 1) * (i + 1) for i in range(3)]
    # The root covers every bound account of this ledger (other tests may bind more).
    all_leaves = []
    for acct in c.get("/v1/accounts", limit=1000).json():
        if acct["evm_address"]:
            all_leaves.append((acct["evm_address"], acct["cumulative"]))
    assert "0x" + BalanceTree(all_leaves).root.hex() == epoch["root"]
    assert c.get(f"/v1/epochs/{epoch['number']}").json()["root"] == epoch["root"]
    assert c.get(f"/v1/epochs/latest/proof/{EthAccount.create().address}").status_code == 404


def test_due_queue_offers_unchecked_receipts_with_the_nodes_record(fresh_ledger, manifest) -> None:  # type: ignore[no-untyped-def]
    ledger = fresh_ledger("sqlite", ["--grace-s", "3600"])
    node, client = Identity.generate(), Identity.generate()
    n, v = ledger.client(node), ledger.client(ledger.verifier)
    n.post("/v1/manifests", manifest.to_json())
    receipts = [make_receipt(node, client, manifest, step=i) for i in range(4)]
    n.post("/v1/receipts", {"receipts": [r.to_json() for r in receipts]})
    v.post("/v1/verdicts", _verdict(ledger.verifier, receipts[0].id, Result.PASS).to_json())
    due = n.get("/v1/receipts/due", limit=10).json()
    assert {d["id"] for d in due} == {r.id.hex() for r in receipts[1:]}
    assert all(d["node"]["receipts"] == 4 and d["node"]["passes"] == 1 for d in due)
    assert due[0]["signed"]["id"] == due[0]["id"] and due[0]["value"] > 0
    assert n.get("/v1/receipts/due", rate=0.0).json() == []


def test_verdict_evidence_is_stored_checked_and_returned(fresh_ledger, manifest) -> None:  # type: ignore[no-untyped-def]
    import base64

    from protocol.verdicts import openings_hash

    ledger = fresh_ledger("sqlite", [])
    node, client = Identity.generate(), Identity.generate()
    n, v = ledger.client(node), ledger.client(ledger.verifier)
    no_chain = n.get("/v1/chain")  # a ledger without a chain says so
    assert no_chain.status_code == 404 and "no chain configured" in no_chain.text
    n.post("/v1/manifests", manifest.to_json())
    receipts = [make_receipt(node, client, manifest, step=i, tokens=4) for i in range(2)]
    n.post("/v1/receipts", {"receipts": [r.to_json() for r in receipts]})
    evidence = b"O" + os.urandom(2048)

    def signed(receipt_id: bytes, ev: bytes):  # type: ignore[no-untyped-def]
        return Verdict(receipt_id=receipt_id, verifier_key=ledger.verifier.public_key, block=1, result=Result.PASS,
                       reason=Reason.NONE, openings_hash=openings_hash(ev), tolerance=1e-4, measured=1e-7,
                       timestamp_ms=int(time.time() * 1000)).sign(ledger.verifier)

    good = signed(receipts[0].id, evidence)
    posted = v.post("/v1/verdicts", {**good.to_json(), "evidence": base64.b64encode(evidence).decode()})
    assert posted.status_code == 200
    record = v.get(f"/v1/verdicts/{posted.json()['id']}").json()
    assert base64.b64decode(record["evidence"]) == evidence

    other = signed(receipts[1].id, evidence)
    tampered = base64.b64encode(evidence[:-1] + b"x").decode()
    refused = v.post("/v1/verdicts", {**other.to_json(), "evidence": tampered})
    assert refused.status_code == 422 and "openings_hash" in refused.text
    assert v.post("/v1/verdicts", {**other.to_json(), "evidence": "not base64!"}).status_code == 422
