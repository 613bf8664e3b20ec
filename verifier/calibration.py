"""Measure the honest spread between recomputations of a block and derive thresholds.

One trial is one honest check as the verifier will see it: a random block, batch size,
prefix length and step shape, fed with the hidden states that really flow into that
block (the model run on random tokens), computed by an "honest node" in a way we do not
control (another thread count, extra rows in its batch, cached decoding, another
attention kernel, float32 or mixed-precision compute of a lower precision it announced)
and recomputed by us in float32 from the opened input, through the verifier's own code
(`recompute.recompute`, `precision.lower_precision_share`). The threshold for each
(dtype, device) is `margin` times the worst divergence seen; the false-positive rate is
estimated from a log-normal fit of the measured distribution (see README.md).

Where that bound cannot exclude int8 weights (above `PRECISION_TEST_ABOVE`: bfloat16,
float16, GPU float32), the class also gets the lower-precision test's bound
(`PRECISION_BOUND` of int8's error, verifier/precision.py), with the worst honest share
and a normal-tail estimate of its false-positive rate.

The same run scores cheaters (quantized weights announcing float32 or bfloat16, another
seed, a skipped block, noise) so the report shows the gap between the worst honest and
the best dishonest node.
"""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from verifier.precision import METRIC as PRECISION_METRIC
from verifier.precision import SIMULATED, PrecisionScore, lower_precision_score
from verifier.recompute import BlockLoader, announced_weights, recompute
from verifier.tolerance import METRIC, Threshold, Thresholds, divergence

DEFAULT_MARGIN = 3.0
HONEST_CLASSES = ("float32", "bfloat16", "float16")
ADVERSARY_KINDS = ("int8", "nf4", "other_seed", "skip_block", "noise", "int8_as_bfloat16")
# The lower-precision test runs where the divergence bound is above this, and on checks
# whose divergence is: int8 weights move a block's output by >= 6.5e-3 of its update
# (README), 65x more, so an honest float32 node (~1e-6) never pays for the test.
PRECISION_TEST_ABOVE = 1e-4
PRECISION_BOUND = 0.5  # fail above half of int8's error: honest ~0 +- 0.03-0.09, int8 ~1
PRECISION_MIN_Z = 5.0  # ... and only when that share stands 5 noise units out
HONEST_WAYS = {
    "threads": "thread count 1/2",
    "padded_batch": "extra rows in the batch",
    "cached": "cached decoding vs full prefix",
    "sdpa_math": "another attention kernel (SDPA math instead of the fused CPU one)",
    "float32_compute": "lower precision announced, computed in float32 and rounded (low precision only)",
    "autocast": "mixed precision: float32 weights under torch.autocast (low precision only)",
}


@dataclass
class CalibrationReport:
    """Raw divergences per honest class and per adversary, plus the derived thresholds."""

    honest: dict[str, list[float]] = field(default_factory=dict)
    honest_share: dict[str, list[PrecisionScore]] = field(default_factory=dict)  # precision.py
    adversary: dict[str, list[float]] = field(default_factory=dict)
    thresholds: Thresholds | None = None


@contextmanager
def _threads(n: int) -> Iterator[None]:
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def tail_probability(samples: list[float], bound: float) -> float:
    """P(divergence > bound) for an honest check, from the measured distribution.

    Exact zeros (bit-identical recomputations) can never exceed a bound; the non-zero
    part is fitted by a normal of log10(divergence). The empirical rate at the bound is
    0 by construction (bound > max); the fit says how far into the tail the bound sits.
    """
    nonzero = [math.log10(s) for s in samples if s > 0.0]
    if not samples or not nonzero:
        return 0.0
    share = len(nonzero) / len(samples)
    if len(nonzero) < 2:
        return share if bound <= 10 ** nonzero[0] else 0.0
    mu, sigma = statistics.fmean(nonzero), statistics.pstdev(nonzero)
    if sigma == 0.0:
        return share if bound <= 10**mu else 0.0
    z = (math.log10(bound) - mu) / sigma
    return share * 0.5 * math.erfc(z / math.sqrt(2.0))


def precision_tail(scores: list[PrecisionScore], bound: float, min_z: float, noise: float = 1.0) -> float:
    """P(an honest check fails the lower-precision test), averaged over the measured checks.

    A check fails when share > bound and z > min_z, i.e. z > max(min_z, bound x snr)
    (share = z / snr). Honest z is fitted by a normal (its measured mean and standard
    deviation); each check contributes the tail beyond its own bar, so narrow checks
    (small snr) weigh in. `noise` > 1 scales every check's noise up (snr down) for classes
    assumed noisier than measured.
    """
    zs = [s.z for s in scores if math.isfinite(s.z)]
    if len(zs) < 2:
        return 0.0
    mu, sigma = statistics.fmean(zs), statistics.pstdev(zs)
    if sigma == 0.0:
        return 0.0
    bars = [max(min_z, bound * s.snr / noise) for s in scores]  # (checks below the divergence gate count too)
    return statistics.fmean(0.5 * math.erfc((bar - mu) / sigma / math.sqrt(2.0)) for bar in bars)


def with_precision_test(
    t: Threshold, scores: list[PrecisionScore], bound: float, min_z: float, noise: float = 1.0
) -> Threshold:
    """`t` with the lower-precision test's bounds, when its divergence bound needs one."""
    if t.threshold <= PRECISION_TEST_ABOVE or not scores:
        return t
    return replace(
        t,
        precision_bound=bound,
        precision_min_z=min_z,
        precision_min_divergence=PRECISION_TEST_ABOVE,
        precision_max_observed=max(s.share for s in scores),
        precision_max_z_observed=max(s.z for s in scores),
        precision_est_false_positive_rate=precision_tail(scores, bound, min_z, noise),
    )


def threshold_from(dtype: str, device: str, samples: list[float], margin: float) -> Threshold:
    ordered = sorted(samples)
    worst = ordered[-1]
    p999 = ordered[min(len(ordered) - 1, int(0.999 * len(ordered)))]
    bound = worst * margin
    return Threshold(
        dtype=dtype,
        device=device,
        threshold=bound,
        max_observed=worst,
        p999_observed=p999,
        trials=len(samples),
        est_false_positive_rate=tail_probability(samples, bound),
    )


class Calibrator:
    """Holds the reference blocks and the pool of real block inputs of one model."""

    def __init__(self, model_dir: str | Path, *, seed: int = 0, pool: int = 12, max_len: int = 48):
        from models.span import BlockSpan  # heavy import, only when calibrating

        self.model_dir = str(model_dir)
        self.rng = random.Random(seed)
        self._span_cls = BlockSpan
        self.max_len = max_len
        self.inputs = self._block_inputs(pool, max_len, seed)  # per block: [pool, max_len, H]
        self.num_blocks = len(self.inputs)
        self._spans: dict[tuple[int, str, str | None], object] = {}
        self.loader = BlockLoader(self.model_dir, capacity=3 * self.num_blocks)  # the verifier's

    def _block_inputs(self, pool: int, max_len: int, seed: int) -> list[torch.Tensor]:
        """Hidden states entering each block when the model reads random token ids."""
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(self.model_dir, dtype=torch.float32)
        gen = torch.Generator().manual_seed(seed)
        ids = torch.randint(0, model.config.vocab_size, (pool, max_len), generator=gen)
        with torch.no_grad():
            out = model(ids, output_hidden_states=True)
        n = model.config.num_hidden_layers
        return [out.hidden_states[i].detach().clone() for i in range(n)]

    def span(self, index: int, dtype: torch.dtype, quantize: str | None = None):  # noqa: ANN201
        key = (index, str(dtype), quantize)
        if key not in self._spans:
            self._spans[key] = self._span_cls.load(
                self.model_dir, index, index + 1, dtype=dtype, device="cpu", quantize=quantize
            )
        return self._spans[key]

    def _sample(self) -> tuple[int, torch.Tensor, int]:
        """A random block, its input rows [B, L, H] and the number of new positions."""
        block = self.rng.randrange(self.num_blocks)
        batch = self.rng.choice((1, 1, 2, 3))
        length = self.rng.randint(1, self.max_len)
        rows = self.rng.sample(range(self.inputs[block].shape[0]), batch)
        x = self.inputs[block][rows, :length].contiguous()
        new = length if self.rng.random() < 0.4 else self.rng.randint(1, min(4, length))
        return block, x, new

    def reference(self, block: int, x: torch.Tensor, new: int) -> torch.Tensor:
        """What the verifier computes (`recompute.recompute`, nothing held): the block's last
        `new` rows from the opened prefix, float32 with the weights of x's dtype."""
        return recompute(self.loader, block, x, new, weights=announced_weights(x.dtype))

    def honest(self, block: int, x: torch.Tensor, new: int, dtype: torch.dtype) -> torch.Tensor:
        """An honest node's output rows, computed in one of the ways nodes really differ."""
        span = self.span(block, dtype)
        x = x.to(dtype)
        ways = (
            list(HONEST_WAYS)
            if dtype != torch.float32
            else ["threads", "padded_batch", "cached", "sdpa_math"]
        )
        way = self.rng.choice(ways)
        with torch.no_grad():
            if way == "sdpa_math":
                from torch.nn.attention import SDPBackend, sdpa_kernel

                with sdpa_kernel(SDPBackend.MATH):
                    return span.block_forward(block, x)[:, -new:]
            if way == "float32_compute":
                return self.reference(block, x, new).to(dtype)
            if way == "autocast":
                with torch.autocast("cpu", dtype=dtype):
                    return self.span(block, torch.float32).block_forward(block, x.float())[:, -new:].to(dtype)
            if way == "threads":
                with _threads(self.rng.choice((1, 2))):
                    return span.block_forward(block, x)[:, -new:]
            if way == "padded_batch":
                extra = self.inputs[block][: self.rng.randint(1, 3), : x.shape[1]].to(dtype)
                first = self.rng.random() < 0.5
                out = span.block_forward(block, torch.cat([x, extra]) if first else torch.cat([extra, x]))
                picked = out[: x.shape[0]] if first else out[-x.shape[0] :]
                return picked[:, -new:]
            cache = span.new_cache(x.shape[0], x.shape[1])
            prefix = x.shape[1] - new
            if prefix > 0:
                span.step(x[:, :prefix], cache)
            return span.step(x[:, prefix:], cache)

    def honest_trial(self, dtype: torch.dtype) -> tuple[float, PrecisionScore]:
        """(divergence, lower-precision score) of one honest check."""
        block, x, new = self._sample()
        x = x.to(dtype)  # the opened input is what the node had, in its dtype
        claimed = self.honest(block, x, new, dtype)
        ref = self.reference(block, x, new)
        score = lower_precision_score(self.loader, block, x, claimed, ref)
        return divergence(claimed, ref, x[:, -new:].float()), score

    def adversary_trial(self, kind: str, other: Calibrator | None = None) -> float:
        """The cheater's divergence; for `int8_as_bfloat16` (caught by the lower-precision
        test) its share, as -share when its z is not above PRECISION_MIN_Z (not caught)."""
        block, x, new = self._sample()
        if kind == "int8_as_bfloat16":
            x = x.to(torch.bfloat16)
            with torch.no_grad():
                claimed = self.span(block, torch.bfloat16, "int8").block_forward(block, x)[:, -new:]
            score = lower_precision_score(self.loader, block, x, claimed)
            return score.share if score.z > PRECISION_MIN_Z else -score.share
        ref = self.reference(block, x, new)
        with torch.no_grad():
            if kind in ("int8", "nf4"):
                claimed = self.span(block, torch.float32, kind).block_forward(block, x)[:, -new:]
            elif kind == "other_seed":
                assert other is not None
                claimed = other.span(block, torch.float32).block_forward(block, x)[:, -new:]
            elif kind == "skip_block":
                claimed = x[:, -new:]
            elif kind == "noise":
                claimed = torch.randn_like(ref) * float(ref.std())
            else:
                raise ValueError(f"unknown adversary {kind!r}")
        return divergence(claimed.float(), ref, x[:, -new:].float())


def supported_dtypes() -> list[torch.dtype]:
    """Honest dtypes this CPU computes a Linear in (float16 matmul is missing on some builds)."""
    out = []
    for name in HONEST_CLASSES:
        dtype = getattr(torch, name)
        try:
            torch.nn.functional.linear(torch.ones(2, 4, dtype=dtype), torch.ones(3, 4, dtype=dtype))
            out.append(dtype)
        except RuntimeError:
            continue
    return out


def calibrate(
    model_dir: str | Path,
    *,
    trials: int = 10_000,
    low_precision_trials: int | None = None,
    adversary_trials: int = 200,
    margin: float = DEFAULT_MARGIN,
    precision_bound: float = PRECISION_BOUND,
    precision_min_z: float = PRECISION_MIN_Z,
    seed: int = 0,
    other_model_dir: str | Path | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> CalibrationReport:
    """Run honest trials per supported dtype on CPU (CUDA classes are extrapolated, see below).

    `low_precision_trials` (default: `trials`) sets the count for bfloat16/float16, whose
    CPU kernels are several times slower than float32 ones.
    """
    cal = Calibrator(model_dir, seed=seed)
    report = CalibrationReport()
    entries: dict[str, Threshold] = {}
    for dtype in supported_dtypes():
        name = str(dtype).removeprefix("torch.")
        n = trials if dtype == torch.float32 or low_precision_trials is None else low_precision_trials
        samples, shares = [], []
        for i in range(n):
            sample, share = cal.honest_trial(dtype)
            samples.append(sample)
            shares.append(share)
            if progress and (i + 1) % 500 == 0:
                progress(name, i + 1, n)
        report.honest[name] = samples
        report.honest_share[name] = shares
        t = threshold_from(name, "cpu", samples, margin)
        entries[Thresholds.key(name, "cpu")] = with_precision_test(
            t, shares, precision_bound, precision_min_z
        )
    other = Calibrator(other_model_dir, seed=seed + 1) if other_model_dir else None
    for kind in ADVERSARY_KINDS:
        if kind == "other_seed" and other is None:
            continue
        scores = []
        for _ in range(adversary_trials):
            try:
                scores.append(cal.adversary_trial(kind, other))
            except (RuntimeError, ImportError, ValueError) as exc:  # e.g. no 4-bit kernel for this shape
                report.adversary[kind + "_error"] = [float("nan")]
                _ = exc
                break
        if scores:
            report.adversary[kind] = scores
    _extrapolate_gpu(entries, report.honest_share, precision_bound, precision_min_z)
    notes: dict[str, object] = {
        "honest_ways": list(HONEST_WAYS.values()),
        "reference": "float32 on CPU from the opened input, weights rounded to the announced dtype "
        "(recompute.recompute, nothing held)",
        "precision_test": f"{PRECISION_METRIC}; simulated: {SIMULATED}; run where threshold > "
        f"{PRECISION_TEST_ABOVE:g}",
        "adversary_min": {k: min(v) for k, v in report.adversary.items() if not k.endswith("_error")},
        "honest_failures": {
            name: sum(
                d > entries[Thresholds.key(name, "cpu")].threshold
                or (
                    d > PRECISION_TEST_ABOVE
                    and s.fails(
                        entries[Thresholds.key(name, "cpu")].precision_bound or math.inf, precision_min_z
                    )
                )
                for d, s in zip(report.honest[name], report.honest_share[name], strict=True)
            )
            for name in report.honest
        },
    }
    report.thresholds = Thresholds(
        entries=entries, metric=METRIC, model=Path(model_dir).name, margin=margin, notes=notes
    )
    return report


def _extrapolate_gpu(
    entries: dict[str, Threshold],
    scores: dict[str, list[PrecisionScore]],
    precision_bound: float,
    precision_min_z: float,
) -> None:
    """Bounds for CUDA nodes when no GPU was measured.

    A GPU fp32 matmul may use TF32 (10-bit mantissa, like float16), so fp32/cuda gets the
    float16 bound; bf16/fp16 on a GPU get twice the CPU bound (other kernels, fused
    attention). All of them are loose enough to need the lower-precision test, whose
    false-positive estimate assumes twice the CPU noise in every check (float16's checks
    for fp32/cuda). Marked "extrapolated" in the file; re-run calibrate on a GPU host.
    """
    cpu = {t.dtype: t for t in entries.values() if t.device == "cpu"}
    loosest = max((t.threshold for t in cpu.values()), default=0.0)
    plan = {
        "float32": (cpu["float16"].threshold if "float16" in cpu else loosest, "TF32 ~ float16 mantissa"),
        "bfloat16": (2 * cpu["bfloat16"].threshold if "bfloat16" in cpu else loosest, "2x CPU bound"),
        "float16": (2 * cpu["float16"].threshold if "float16" in cpu else loosest, "2x CPU bound"),
    }
    for dtype, (bound, why) in plan.items():
        key = Thresholds.key(dtype, "cuda")
        if key not in entries and bound > 0:
            t = Threshold(dtype=dtype, device="cuda", threshold=bound, source=f"extrapolated: {why}")
            measured = scores.get("float16" if dtype == "float32" else dtype, [])
            entries[key] = with_precision_test(t, measured, precision_bound, precision_min_z, noise=2.0)
