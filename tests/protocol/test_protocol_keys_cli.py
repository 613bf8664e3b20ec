"""`corolla keys` as a user runs it: real processes, real files."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from protocol.identity import Identity
from protocol.vectors.generate import seed


def corolla(*args, env=None):
    return subprocess.run([sys.executable, "-m", "cli.main", "keys", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=60)


def test_keys_new_show_and_bind(tmp_path):
    key = tmp_path / "k" / "id.key"
    made = corolla("new", "--out", str(key), "--json")
    assert made.returncode == 0, made.stderr
    info = json.loads(made.stdout)
    assert info["public_key"] == Identity.load(key).public_hex and info["evm_address"] is None
    assert Identity.load(key).private_bytes().hex() not in made.stdout + made.stderr
    again = corolla("new", "--out", str(key))
    assert again.returncode == 2 and "--force" in again.stderr and "Traceback" not in again.stderr
    eth = tmp_path / "eth"
    eth.write_text(seed("evm").hex())
    bound = corolla("bind", "--eth-key-file", str(eth), "--key", str(key), "--json")
    assert bound.returncode == 0, bound.stderr
    shown = corolla("show", "--json", env={"COROLLA_KEY": str(key)})
    assert json.loads(shown.stdout)["evm_address"] == json.loads(bound.stdout)["evm_address"].strip()
    assert json.loads(shown.stdout)["evm_address"].startswith("0x")


def test_keys_show_reports_user_mistakes_in_one_line(tmp_path):
    missing = corolla("show", str(tmp_path / "nope"))
    assert missing.returncode == 2 and "corolla keys new" in missing.stderr
    key = tmp_path / "open.key"
    Identity.generate().save(key)
    key.chmod(0o644)
    loose = corolla("show", str(key))
    assert loose.returncode == 2 and len(loose.stderr.strip().splitlines()) == 1 and "chmod 600" in loose.stderr
