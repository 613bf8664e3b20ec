"""How far an honest node's block output may sit from the verifier's recomputation.

The verifier recomputes one block in float32 from the node's opened input and compares
with the node's opened output. Honest nodes differ from that reference by rounding only
(other kernels, thread counts, batch shapes, cached decoding, lower precision they
announced); cheaters differ by the size of the block's own update. The metric divides
each row's RMS error by the RMS of the block's update (`reference - input`), so it is
blind to the residual stream's scale and to the model's size, and a skipped block scores
~1 by construction. An RMS rather than a max: quantized weights shift every element a
little, which an RMS sees ~2x more clearly against bf16 rounding than a max does
(measured, verifier/README.md).

Thresholds live per (claimed dtype, device class) in `verifier/thresholds.json`, written
by `corolla verifier calibrate` (see verifier/README.md for how they were chosen). An
entry also carries the bound of the lower-precision test (verifier/precision.py) where
the divergence bound alone lets int8 weights through (bfloat16, float16, GPU float32).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

METRIC = "max over rows of rms(error) / rms(block update)"
DEFAULT_PATH = Path(__file__).with_name("thresholds.json")


def divergence(claimed: torch.Tensor, reference: torch.Tensor, block_input: torch.Tensor) -> float:
    """Scale-free distance of a claimed block output from the recomputed one.

    All three tensors hold the same rows ([batch, new positions, hidden]); the input
    rows are the block's input at those positions. Per row (one token of one sequence)
    the RMS error over the hidden dimension, divided by the RMS of the block's update
    over all rows; the worst row counts, so faking a few rows of a batch does not hide
    in an average. Computed in float64 so the metric adds no rounding of its own.
    """
    if claimed.shape != reference.shape or block_input.shape != reference.shape:
        raise ValueError(
            f"shape mismatch: claimed {tuple(claimed.shape)}, reference {tuple(reference.shape)}, "
            f"input {tuple(block_input.shape)}"
        )
    c, r, x = (t.detach().to("cpu", torch.float64) for t in (claimed, reference, block_input))
    if not bool(torch.isfinite(c).all()):
        return float("inf")
    update_rms = float((r - x).pow(2).mean().sqrt())
    scale = max(update_rms, 1e-12 * max(float(r.abs().max()), 1.0))
    row_rms = (c - r).pow(2).mean(dim=-1).sqrt()
    return float(row_rms.max()) / scale


@dataclass(frozen=True)
class Threshold:
    """Pass bound for one (claimed dtype, device class), with the evidence behind it."""

    dtype: str
    device: str
    threshold: float
    max_observed: float = 0.0
    p999_observed: float = 0.0
    trials: int = 0
    est_false_positive_rate: float = 0.0
    source: str = "measured"  # "measured" or "extrapolated: <why>"
    # The lower-precision test (verifier/precision.py), run where the bound above cannot
    # tell int8 weights from honest rounding; 0.0: not run for this class.
    precision_bound: float = 0.0  # fail when the output carries more of int8's error ...
    precision_min_z: float = 0.0  # ... and that share stands this many noise units out,
    precision_min_divergence: float = 0.0  # checked only above this divergence (int8: >= 5e-3)
    precision_max_observed: float = 0.0  # worst honest share in calibration
    precision_max_z_observed: float = 0.0  # worst honest z in calibration
    precision_est_false_positive_rate: float = 0.0  # from the fitted spread of honest z


@dataclass
class Thresholds:
    """All thresholds of one calibration run, looked up by what the node announced."""

    entries: dict[str, Threshold]
    metric: str = METRIC
    model: str = ""
    margin: float = 0.0
    notes: dict[str, object] = field(default_factory=dict)

    @staticmethod
    def key(dtype: str, device: str) -> str:
        return f"{dtype}/{device}"

    def lookup(self, dtype: str, device: str | None = None) -> Threshold:
        """Threshold for a node computing in `dtype` on `device` ("cpu", "cuda", ...).

        An unknown or unannounced device gets the loosest threshold known for the
        dtype: a node must never fail because we guessed its hardware wrong.
        """
        dtype = dtype.removeprefix("torch.")
        if device is not None:
            hit = self.entries.get(self.key(dtype, device.split(":")[0]))
            if hit is not None:
                return hit
        same_dtype = [t for t in self.entries.values() if t.dtype == dtype]
        if not same_dtype:
            raise KeyError(f"no calibrated threshold for dtype {dtype!r}; run `corolla verifier calibrate`")
        return max(same_dtype, key=lambda t: t.threshold)

    def to_json(self) -> dict[str, object]:
        return {
            "metric": self.metric,
            "model": self.model,
            "margin": self.margin,
            "notes": self.notes,
            "thresholds": {k: asdict(v) for k, v in sorted(self.entries.items())},
        }

    def save(self, path: Path | str = DEFAULT_PATH) -> None:
        Path(path).write_text(json.dumps(self.to_json(), indent=2, sort_keys=True) + "\n")

    @classmethod
    def from_json(cls, data: dict[str, object]) -> Thresholds:
        raw = data.get("thresholds")
        if not isinstance(raw, dict):
            raise ValueError("thresholds file has no 'thresholds' object")
        entries = {k: Threshold(**v) for k, v in raw.items()}
        notes = data.get("notes")
        return cls(
            entries=entries,
            metric=str(data.get("metric", METRIC)),
            model=str(data.get("model", "")),
            margin=float(data.get("margin", 0.0)),  # type: ignore[arg-type]
            notes=dict(notes) if isinstance(notes, dict) else {},
        )

    @classmethod
    def load(cls, path: Path | str = DEFAULT_PATH) -> Thresholds:
        return cls.from_json(json.loads(Path(path).read_text()))
