"""`corolla wallet` and `corolla node earnings` against a real ledger process."""

from __future__ import annotations

import json

from tests_priority_helpers import receipt_for, submit

from client import wallet_cli
from client.spending import SpendingPolicy
from node import earnings_cli
from node.ticket_check import TicketGate
from protocol.identity import Identity


def save(identity: Identity, tmp_path) -> str:
    path = tmp_path / f"{identity.public_hex[:8]}.key"
    identity.save(path)
    return str(path)


def test_wallet_and_earnings_show_what_the_ledger_settled(ledger, tmp_path, capsys):
    client, node = ledger.rich[6], Identity.generate()
    policy = SpendingPolicy(ledger.url, client, budget=12, ticket_cap=12)
    gate = TicketGate(node.public_key, frozenset({ledger.key}), min_price_per_token=4)
    receipts = []
    for step in range(3):
        d = gate.decide(policy.offer().ticket, client.public_key, tokens=1)
        receipts.append(receipt_for(ledger, node, client, d.ticket_id, d.charge, step=step))
    submit(ledger, node, receipts)
    epoch = ledger.close_epoch()["number"]

    assert wallet_cli.main(["--ledger", ledger.url, "--key", save(client, tmp_path), "--width", "200"]) == 0
    out = capsys.readouterr().out
    assert "balance" in out and "escrow" in out and "spent on priority" in out
    summary_row = next(line for line in out.splitlines() if "988" in line)  # 1000 granted - 12 escrowed
    assert " 12 " in summary_row  # spent on priority
    assert "grant" in out and "-12" in out  # history: the grant and the escrow
    ticket_row = next(line for line in out.splitlines() if line.strip("│ ").startswith(d.ticket_id.hex()[:16]))
    assert [c.strip() for c in ticket_row.split("│") if c.strip()][1:] == ["3", "3", "12", "12"]

    assert earnings_cli.main(["--ledger", ledger.url, "--key", save(node, tmp_path), "--width", "200"]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.strip("│ ").startswith(str(epoch)))
    cells = [c.strip() for c in row.split("│") if c.strip()]
    assert cells[0] == str(epoch) and cells[2] == "12"  # ticket income in that epoch
    assert "balance" in out
    policy.close()


def test_wallet_withdraw_moves_credits_on_chain_only_for_a_bound_account(ledger, tmp_path, capsys):
    from eth_account import Account

    from protocol.binding import make_binding

    client = ledger.rich[7]
    key_file = save(client, tmp_path)
    assert wallet_cli.main(["--ledger", ledger.url, "--key", key_file, "--withdraw", "5"]) == 2
    assert "bind this key to an EVM address first" in capsys.readouterr().err

    import httpx

    from protocol.request_auth import sign_request

    body = json.dumps(make_binding(client, Account.create().key).to_json()).encode()
    headers = {**sign_request(client, "POST", "/v1/accounts/bind", body), "content-type": "application/json"}
    assert httpx.post(ledger.url + "/v1/accounts/bind", content=body, headers=headers).status_code == 200
    before = httpx.get(f"{ledger.url}/v1/accounts/{client.public_hex}").json()["balance"]
    assert wallet_cli.main(["--ledger", ledger.url, "--key", key_file, "--withdraw", "5", "--width", "200"]) == 0
    assert "withdrew 5 credits" in capsys.readouterr().out
    assert httpx.get(f"{ledger.url}/v1/accounts/{client.public_hex}").json()["balance"] == before - 5
    assert wallet_cli.main(["--ledger", ledger.url, "--key", key_file, "--withdraw", str(before)]) == 2
    assert "insufficient credits" in capsys.readouterr().err
