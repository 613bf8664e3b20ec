"""`corolla wallet` and `corolla node earnings` against a real ledger process."""

from __future__ import annotations

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
