"""`corolla wallet` and `corolla node earnings`: user mistakes are one line and exit code 2."""

from __future__ import annotations

import socket

import pytest

from client import wallet_cli
from node import earnings_cli
from protocol.identity import Identity


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def key_file(tmp_path):
    path = tmp_path / "id.key"
    Identity.generate().save(path)
    return path


@pytest.mark.parametrize("main, name", [(wallet_cli.main, "corolla wallet"),
                                         (earnings_cli.main, "corolla node earnings")])
def test_missing_key_file_is_one_line(main, name, tmp_path, capsys):
    assert main(["--ledger", "http://127.0.0.1:1", "--key", str(tmp_path / "nope.key")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(name) and "does not exist" in err[0]


@pytest.mark.parametrize("main", [wallet_cli.main, earnings_cli.main])
def test_unreachable_ledger_is_one_line(main, key_file, capsys):
    url = f"http://127.0.0.1:{free_port()}"
    assert main(["--ledger", url, "--key", str(key_file)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot reach the ledger" in err[0]


@pytest.mark.parametrize("main", [wallet_cli.main, earnings_cli.main])
def test_malformed_ledger_url_is_one_line(main, key_file, capsys):
    assert main(["--ledger", "not a url", "--key", str(key_file)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1


def test_earnings_group_by_epoch_and_skip_unsettled_entries():
    entries = [
        {"kind": "work", "delta": 10, "epoch": 1},
        {"kind": "spend", "delta": 4, "epoch": 1},
        {"kind": "work", "delta": 7, "epoch": 2},
        {"kind": "slash", "delta": -5, "epoch": 2},
        {"kind": "escrow", "delta": -3, "epoch": None},  # the operator spending as a client
        {"kind": "grant", "delta": 100, "epoch": None},
    ]
    rows = earnings_cli.earnings_by_epoch(entries)
    assert [(r.epoch, r.work, r.tickets, r.slashed, r.net) for r in rows] == [(1, 10, 4, 0, 14), (2, 7, 0, -5, 2)]
