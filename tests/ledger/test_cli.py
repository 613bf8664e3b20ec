"""`corolla ledger` commands as a user runs them, and the ledger's import hygiene (no torch)."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.ledger.harness import ROOT, LedgerProcess


def corolla(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cli.main", "ledger", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)


def test_ledger_app_never_imports_torch() -> None:
    code = "import sys, ledger.app, ledger.cli; print('torch' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False False"


def test_check_and_close_epoch_commands(tmp_path) -> None:  # type: ignore[no-untyped-def]
    db = f"sqlite:///{tmp_path / 'cli.db'}"
    server = LedgerProcess(db, tmp_path / "srv", args=["--grant", "ab" * 32 + ":500"]).start()
    server.stop()
    closed = corolla("close-epoch", "--db", db, "--key", str(tmp_path / "srv" / "ledger.key"))
    assert closed.returncode == 0, closed.stderr
    assert json.loads(closed.stdout.strip().splitlines()[-1])["number"] == 1
    checked = corolla("check", "--db", db)
    assert checked.returncode == 0 and "books are consistent" in checked.stdout
    assert "minted 500" in checked.stdout
    # restart with the same grant mints nothing again
    LedgerProcess(db, tmp_path / "srv", args=["--grant", "ab" * 32 + ":500"]).start().stop()
    assert "minted 500," in corolla("check", "--db", db).stdout


def test_user_mistakes_get_one_line_and_exit_2(tmp_path) -> None:  # type: ignore[no-untyped-def]
    for args in (["serve", "--grant", "nothex:5"], ["check", "--db", "mysql://x"], ["serve", "--port", "notanumber"],
                 ["serve", "--port", "0", "--db", f"sqlite:///{tmp_path}/missing/dir/x.db"]):
        out = corolla(*args)
        assert out.returncode == 2, (args, out.stderr)
        assert "Traceback" not in out.stderr and out.stderr.strip()
    assert corolla("--help").returncode == 0


def test_scheduler_closes_epochs_by_itself(fresh_ledger) -> None:  # type: ignore[no-untyped-def]
    import time

    ledger = fresh_ledger("sqlite", ["--epoch-minutes", "0.01"])  # every 0.6 s
    deadline = time.time() + 30
    epochs: list = []
    while time.time() < deadline and len(epochs) < 2:
        epochs = ledger.client().get("/v1/epochs").json()
        time.sleep(0.3)
    assert [e["number"] for e in epochs][-2:] == [2, 1]
