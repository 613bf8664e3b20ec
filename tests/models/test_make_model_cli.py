"""`corolla make-model` as a user runs it: a real process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from models import SUPPORTED_ARCHS
from models.manifest_builder import load_manifest

ROOT = Path(__file__).resolve().parents[2]


def _corolla(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli.main", *args], cwd=ROOT, capture_output=True, text=True, timeout=120
    )


def test_help_lists_every_flag() -> None:
    result = _corolla("make-model", "--help")
    assert result.returncode == 0
    for flag in ("--arch", "--out", "--layers", "--hidden", "--heads", "--vocab", "--seed", "--dtype"):
        assert flag in result.stdout


def test_unknown_arch_is_a_clear_error(tmp_path: Path) -> None:
    result = _corolla("make-model", "--arch", "gpt9", "--out", str(tmp_path / "m"))
    assert result.returncode == 2
    assert "invalid choice: 'gpt9'" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "m").exists()


def test_heads_that_do_not_divide_hidden_are_refused(tmp_path: Path) -> None:
    result = _corolla(
        "make-model", "--arch", "llama", "--out", str(tmp_path / "m"), "--hidden", "64", "--heads", "3"
    )
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "--heads 3" in result.stderr


@pytest.mark.parametrize("arch", SUPPORTED_ARCHS)
def test_make_model_writes_a_loadable_model_with_offline_tokenizer(tmp_path: Path, arch: str) -> None:
    out = tmp_path / arch
    result = _corolla("make-model", "--arch", arch, "--out", str(out), "--layers", "2", "--hidden", "64")
    assert result.returncode == 0, result.stderr
    manifest = load_manifest(out)
    assert manifest.manifest_hash().hex() in result.stdout
    assert manifest.num_blocks == 2
    assert manifest.config["model_type"] == arch

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(out)
    text = "Hello swarm, 42 tokens!"
    ids = tokenizer(text).input_ids
    assert tokenizer.decode(ids) == text
    assert len(tokenizer) == manifest.config["vocab_size"]
    assert tokenizer.eos_token_id == manifest.config["eos_token_id"]
