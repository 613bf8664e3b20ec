"""`corolla verifier`: run the spot-checking service, calibrate tolerances, recheck a verdict.

`corolla verifier` with no subcommand (or with options first) means `run`.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from pathlib import Path

SUBCOMMANDS = ("run", "calibrate", "recheck")


class UsageError(Exception):
    """A user mistake: printed as one line, exit code 2."""


def _run_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="corolla verifier run", description="Spot-check receipts and post signed verdicts."
    )
    p.add_argument("--ledger", required=True, help="ledger base URL, e.g. http://127.0.0.1:8700")
    p.add_argument("--model", required=True, help="model directory or hub name (reference weights)")
    p.add_argument("--key", required=True, help="verifier Ed25519 key file (created on first use, mode 0600)")
    p.add_argument(
        "--initial-peers", nargs="+", default=[], metavar="MADDR", help="DHT peers to join to reach nodes"
    )
    p.add_argument(
        "--sample-rate", type=float, default=0.05, help="base share of receipts to challenge (0..1)"
    )
    p.add_argument("--device", default="cpu", help="device for recomputation: cpu or cuda[:N]")
    p.add_argument(
        "--thresholds", default=None, help="thresholds JSON (default: the shipped verifier/thresholds.json)"
    )
    p.add_argument(
        "--state", default=None, help="SQLite state file (default: ~/.corolla/verifier-<key>.sqlite)"
    )
    p.add_argument("--timeout", type=float, default=10.0, help="seconds a node has to answer a challenge")
    p.add_argument(
        "--unreachable-limit",
        type=int,
        default=3,
        help="consecutive unanswered challenges after which a node's next one counts as a failure",
    )
    p.add_argument("--poll", type=float, default=2.0, help="seconds between polls of the ledger when idle")
    p.add_argument("--batch", type=int, default=50, help="receipts pulled from the ledger per poll")
    p.add_argument(
        "--session-quiet",
        type=float,
        default=30.0,
        help="seconds without a receipt of a node for a client after which its decode sessions are"
        " checked (sampled steps of a session wait, then share one block)",
    )
    p.add_argument(
        "--session-max-wait",
        type=float,
        default=300.0,
        help="seconds after which a session's sampled steps are checked even if it still runs; keep it"
        " below the ledger's --grace-s and the nodes' --retention-s",
    )
    p.add_argument(
        "--once",
        action="store_true",
        help="check what is due now, then exit (decode sessions too, even if they may still run)",
    )
    p.add_argument("--ready-file", default=None, help="write a JSON object here once running")
    return p


def _calibrate_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="corolla verifier calibrate",
        description="Measure the honest spread between recomputations and write per-(dtype, device) thresholds.",
    )
    p.add_argument(
        "--model", default=None, help="model directory (default: a small seeded Llama made on the fly)"
    )
    p.add_argument(
        "--other-model", default=None, help="same architecture, other weights: scored as a cheater"
    )
    p.add_argument("--trials", type=int, default=10_000, help="honest checks per dtype")
    p.add_argument(
        "--low-precision-trials",
        type=int,
        default=None,
        help="honest checks for bfloat16/float16 (default: --trials; their CPU kernels are slower)",
    )
    p.add_argument("--adversary-trials", type=int, default=200, help="checks per cheating strategy")
    p.add_argument(
        "--margin", type=float, default=None, help="threshold = margin x worst honest divergence (default 3)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the trial sampler")
    p.add_argument("--out", default=None, help="output JSON (default: verifier/thresholds.json)")
    return p


def _recheck_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="corolla verifier recheck",
        description="Recompute a verdict from the ledger's records and say whether it is reproduced.",
    )
    p.add_argument("verdict_id", help="hex verdict id")
    p.add_argument("--ledger", required=True, help="ledger base URL")
    p.add_argument("--model", required=True, help="model directory or hub name (reference weights)")
    p.add_argument("--openings", default=None, help="openings blob file, when the ledger does not hold it")
    p.add_argument(
        "--initial-peers",
        nargs="+",
        default=[],
        metavar="MADDR",
        help="DHT peers: re-challenge the node for the openings when no blob is at hand",
    )
    p.add_argument("--thresholds", default=None, help="thresholds JSON (default: the shipped one)")
    p.add_argument("--device", default="cpu", help="device for recomputation")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    return p


def main(argv: list[str]) -> int:
    if argv and argv[0] in ("-h", "--help"):
        print(
            "usage: corolla verifier {run,calibrate,recheck} [OPTIONS]\n\n"
            "  run        pull due receipts, challenge nodes, recompute, post verdicts (default)\n"
            "  calibrate  measure honest spread, write thresholds\n"
            "  recheck    reproduce a verdict from the ledger's records\n\n"
            "Run `corolla verifier COMMAND --help` for the options of one command."
        )
        return 0
    command, rest = ("run", argv) if not argv or argv[0] not in SUBCOMMANDS else (argv[0], argv[1:])
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        if command == "calibrate":
            return calibrate_main(_calibrate_parser().parse_args(rest))
        if command == "recheck":
            return recheck_main(_recheck_parser().parse_args(rest))
        return run_main(_run_parser().parse_args(rest))
    except UsageError as exc:
        print(f"corolla verifier: {exc}", file=sys.stderr)
        return 2


def calibrate_main(args: argparse.Namespace) -> int:
    from verifier.calibration import DEFAULT_MARGIN, calibrate
    from verifier.tolerance import DEFAULT_PATH

    if args.trials < 2:
        raise UsageError("--trials must be at least 2")
    with tempfile.TemporaryDirectory(prefix="corolla-calibrate-") as tmp:
        model, other = args.model, args.other_model
        if model is None:
            from models.make_model import make_model

            model = str(make_model("llama", Path(tmp) / "reference", layers=4, hidden=64, seed=0))
            other = other or str(make_model("llama", Path(tmp) / "other", layers=4, hidden=64, seed=1))
        elif not Path(model).exists():
            raise UsageError(f"model directory {model} does not exist")

        def progress(dtype: str, done: int, total: int) -> None:
            print(f"  {dtype}: {done}/{total} honest checks", file=sys.stderr, flush=True)

        report = calibrate(
            model,
            trials=args.trials,
            low_precision_trials=args.low_precision_trials,
            adversary_trials=args.adversary_trials,
            margin=args.margin or DEFAULT_MARGIN,
            seed=args.seed,
            other_model_dir=other,
            progress=progress,
        )
    assert report.thresholds is not None
    out = Path(args.out) if args.out else DEFAULT_PATH
    report.thresholds.save(out)
    print(f"{'class':16} {'trials':>7} {'max honest':>11} {'threshold':>10} {'est. FP rate':>12}")
    for key, t in sorted(report.thresholds.entries.items()):
        print(
            f"{key:16} {t.trials:7d} {t.max_observed:11.3g} {t.threshold:10.3g} {t.est_false_positive_rate:12.2g}"
            + ("" if t.source == "measured" else f"  ({t.source})")
        )
    print(
        "lower-precision test (verifier/precision.py): fail when share of int8's error > bound and z > min z"
    )
    print(
        f"{'class':16} {'bound':>6} {'min z':>6} {'max honest share':>17} {'max honest z':>13} {'est. FP rate':>12}"
    )
    for key, t in sorted(report.thresholds.entries.items()):
        if t.precision_bound > 0:
            print(
                f"{key:16} {t.precision_bound:6.2f} {t.precision_min_z:6.1f} {t.precision_max_observed:17.3f} "
                f"{t.precision_max_z_observed:13.2f} {t.precision_est_false_positive_rate:12.2g}"
            )
    for kind, scores in sorted(report.adversary.items()):
        finite = [s for s in scores if s == s]
        if finite:
            print(f"adversary {kind:12} min {min(finite):.3g}  median {sorted(finite)[len(finite) // 2]:.3g}")
    print(f"wrote {out}")
    return 0


def run_main(args: argparse.Namespace) -> int:
    from protocol.identity import KeyFileError
    from verifier.ledger_client import LedgerError
    from verifier.service import ServiceConfig, run_service

    if not 0.0 <= args.sample_rate <= 1.0:
        raise UsageError("--sample-rate must be between 0 and 1")
    if args.session_quiet < 0 or args.session_max_wait < 0:
        raise UsageError("--session-quiet and --session-max-wait must be >= 0")
    if not args.initial_peers:
        raise UsageError("--initial-peers is required: without the DHT no node can be challenged")
    config = ServiceConfig(
        ledger=args.ledger.rstrip("/"),
        model=args.model,
        key_file=args.key,
        initial_peers=list(args.initial_peers),
        sample_rate=args.sample_rate,
        device=args.device,
        thresholds_file=args.thresholds,
        state_file=args.state,
        challenge_timeout_s=args.timeout,
        unreachable_limit=args.unreachable_limit,
        poll_s=args.poll,
        batch=args.batch,
        session_quiet_s=args.session_quiet,
        session_max_wait_s=args.session_max_wait,
        once=args.once,
        ready_file=args.ready_file,
    )
    try:
        return run_service(config)
    except (FileNotFoundError, ValueError, KeyFileError, LedgerError) as exc:
        raise UsageError(str(exc)) from exc


def recheck_main(args: argparse.Namespace) -> int:
    from verifier.ledger_client import LedgerError
    from verifier.recheck import recheck

    try:
        if len(bytes.fromhex(args.verdict_id)) != 32:
            raise ValueError
    except ValueError:
        raise UsageError(f"{args.verdict_id!r} is not a verdict id (64 hex characters)") from None
    try:
        outcome = recheck(
            args.verdict_id,
            ledger=args.ledger.rstrip("/"),
            model=args.model,
            openings_file=args.openings,
            initial_peers=list(args.initial_peers),
            thresholds_file=args.thresholds,
            device=args.device,
        )
    except (FileNotFoundError, ValueError, LedgerError) as exc:
        raise UsageError(str(exc)) from exc
    if args.json:
        print(json.dumps(outcome.to_json()))
    else:
        print(outcome.summary())
    return 0 if outcome.reproduced else 1
