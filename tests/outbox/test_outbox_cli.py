"""`corolla node receipts` lists an outbox without a ledger."""

from __future__ import annotations

import json

from outbox_fixtures import make_receipt

from node.receipt_outbox import ReceiptOutbox, default_outbox_path
from node.receipts_cli import main


def test_lists_receipts_newest_first_with_shipping_state(tmp_path, capsys):
    key = tmp_path / "identity.key"
    path = default_outbox_path(key)
    assert path == tmp_path / "identity.receipts.sqlite"
    with ReceiptOutbox(path) as outbox:
        outbox.append_many([make_receipt(i, acked=i == 2) for i in range(3)])
        outbox.mark_shipped([make_receipt(0).id])
    assert main(["--key", str(key), "--json"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    rows, summary = lines[:-1], lines[-1]["summary"]
    assert {r["id"] for r in rows} == {make_receipt(i).id.hex() for i in range(3)}
    by_step = {r["step"]: r for r in rows}
    assert by_step[0]["shipped"] == "accepted" and by_step[1]["shipped"] == "no" and by_step[2]["acked"]
    assert by_step[1]["blocks"] == "0:2" and by_step[1]["kind"] == "inference"
    assert summary["total"] == 3 and summary["unshipped"] == 2 and summary["acked"] == 1
    assert main(["--outbox", str(path), "--unshipped"]) == 0
    table = capsys.readouterr().out
    assert make_receipt(1).id.hex()[:16] in table and make_receipt(0).id.hex()[:16] not in table
    assert "3 receipts: 2 waiting, 1 accepted" in table


def test_user_mistakes_get_one_line_and_exit_2(tmp_path, capsys):
    assert main(["--outbox", str(tmp_path / "missing.sqlite")]) == 2
    assert "no outbox" in capsys.readouterr().err
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"not a database at all" * 100)
    assert main(["--outbox", str(junk)]) == 2
    err = capsys.readouterr().err
    assert "not a receipt outbox" in err and len(err.strip().splitlines()) == 1
