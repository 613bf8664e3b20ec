"""The divergence metric, the shipped thresholds, and `corolla verifier calibrate`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cli.main import main as corolla
from verifier.calibration import tail_probability, threshold_from
from verifier.tolerance import DEFAULT_PATH, Threshold, Thresholds, divergence

ROOT = Path(__file__).resolve().parents[2]


def test_divergence_is_scale_free_and_scores_a_skipped_block_near_one() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 6, 64, generator=g)
    ref = x + 0.1 * torch.randn(2, 6, 64, generator=g)
    noisy = ref + 1e-3 * torch.randn(2, 6, 64, generator=g)
    d = divergence(noisy, ref, x)
    assert divergence(noisy * 1000, ref * 1000, x * 1000) == pytest.approx(d, rel=1e-4)
    assert 0.005 < d < 0.05
    assert 0.8 < divergence(x, ref, x) < 1.6  # skipped: error == the block's whole update
    assert divergence(ref, ref, x) == 0.0
    bad = ref.clone()
    bad[1, 3] = float("nan")
    assert divergence(bad, ref, x) == float("inf")
    one_row = ref.clone()
    one_row[0, 0] += 0.1 * torch.randn(64, generator=g)  # one faked row is not averaged away
    assert divergence(one_row, ref, x) > 0.5
    with pytest.raises(ValueError):
        divergence(ref[:1], ref, x)


def test_shipped_thresholds_cover_every_dtype_and_separate_cheaters() -> None:
    th = Thresholds.load(DEFAULT_PATH)
    for dtype in ("float32", "bfloat16", "float16"):
        assert th.lookup(dtype, "cpu").threshold > 0
        assert th.lookup(dtype, "cuda").threshold >= th.lookup(dtype, "cpu").threshold * 0.99
    assert th.lookup("float32", "cpu").threshold < 1e-3  # an int8 node claiming fp32 scores ~1e-2
    assert th.lookup("bfloat16", "cpu").threshold < 0.12  # an nf4 node scores >= 0.12
    assert th.lookup("float32", "tpu").threshold == max(
        t.threshold for t in th.entries.values() if t.dtype == "float32"
    )
    with pytest.raises(KeyError):
        th.lookup("int8")


def test_threshold_from_samples_and_tail_estimate() -> None:
    samples = [0.0] * 50 + [10 ** (-6 + 0.01 * i) for i in range(50)]
    t = threshold_from("float32", "cpu", samples, margin=3.0)
    assert t.max_observed == max(samples) and t.threshold == pytest.approx(3 * max(samples))
    assert 0 <= t.est_false_positive_rate < 1e-3
    assert tail_probability(samples, 1e-9) == pytest.approx(0.5, abs=0.01)  # below every non-zero sample
    assert tail_probability([0.0] * 10, 1e-9) == 0.0


def test_calibrate_command_writes_thresholds(
    model_dir: Path, other_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "th.json"
    rc = corolla(
        [
            "verifier",
            "calibrate",
            "--model",
            str(model_dir),
            "--other-model",
            str(other_model_dir),
            "--trials",
            "12",
            "--adversary-trials",
            "4",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    th = Thresholds.load(out)
    assert th.entries["float32/cpu"].trials == 12 and th.entries["bfloat16/cpu"].trials == 12
    assert th.entries["float32/cuda"].source.startswith("extrapolated")
    adversary = th.notes["adversary_min"]
    assert isinstance(adversary, dict)
    for kind in ("nf4", "other_seed", "skip_block", "noise"):
        assert adversary[kind] > th.entries["bfloat16/cpu"].threshold, kind
    assert adversary["int8"] > th.entries["float32/cpu"].threshold
    # int8 announcing bfloat16 is caught by the lower-precision test (share > bound, z > min z)
    bf16 = th.entries["bfloat16/cpu"]
    assert bf16.precision_bound == 0.5 and adversary["int8_as_bfloat16"] > bf16.precision_bound
    assert th.entries["float32/cpu"].precision_bound == 0.0  # its bound excludes int8 already
    failures = th.notes["honest_failures"]
    assert isinstance(failures, dict) and failures["float32"] == failures["bfloat16"] == 0
    assert "wrote" in capsys.readouterr().out
    assert json.loads(out.read_text())["metric"] == th.metric
    assert Threshold(**json.loads(out.read_text())["thresholds"]["float32/cpu"]).trials == 12


@pytest.mark.parametrize(
    "argv",
    [
        ["verifier", "calibrate", "--trials", "1"],
        ["verifier", "calibrate", "--model", "/nonexistent/model"],
        ["verifier", "--ledger", "http://127.0.0.1:9", "--model", "m", "--key", "k", "--sample-rate", "2"],
        ["verifier", "--ledger", "http://127.0.0.1:9", "--model", "m", "--key", "k"],
        ["verifier", "recheck", "zz", "--ledger", "http://127.0.0.1:9", "--model", "/nonexistent"],
    ],
)
def test_user_mistakes_get_one_line_and_exit_2(argv: list[str]) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "cli.main", *argv], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and proc.stderr.startswith("corolla verifier:")


def test_help_lists_subcommands() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "cli.main", "verifier", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0 and "calibrate" in proc.stdout and "recheck" in proc.stdout
