"""Entry point of the `corolla` command.

Each subcommand lives in the role that owns it and is imported only when used, so
`corolla ledger ...` never pays for importing torch and `corolla --help` is instant.
A subcommand module exposes `main(argv: list[str]) -> int`.
"""

from __future__ import annotations

import importlib
import sys

# name -> (module path, one-line help). Modules are imported lazily.
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("cli.demo", "start a whole swarm on 127.0.0.1, generate and fine-tune through it"),
    "make-model": ("models.cli", "write a small model with seeded random weights and an offline tokenizer"),
    "dht": ("node.dht_cli", "run a DHT bootstrap peer"),
    "node": ("node.cli", "serve a span of transformer blocks (also: node receipts, node earnings)"),
    "generate": ("client.cli", "generate text through the swarm"),
    "wallet": ("client.wallet_cli", "show a client's balance, escrow and spending"),
    "claim": ("client.claim_cli", "claim settled credits on-chain with a Merkle proof from the ledger"),
    "keys": ("cli.keys", "create or show an Ed25519 identity key file"),
    "ledger": ("ledger.cli", "run the ledger service (serve, check, close-epoch)"),
    "verifier": ("verifier.cli", "spot-check receipts (run, calibrate, recheck)"),
    "chain": ("ledger.chain_cli", "deploy the settlement contracts, show their state, slash a failed node"),
}


def _usage() -> str:
    width = max(len(n) for n in COMMANDS)
    lines = ["usage: corolla COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name.ljust(width)}  {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "Run `corolla COMMAND --help` for the options of one command."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"corolla: unknown command {name!r}. Run `corolla --help` for the list.", file=sys.stderr)
        return 2
    module_path, _ = COMMANDS[name]
    try:
        module = importlib.import_module(module_path)
    except ModuleNotFoundError as exc:
        if exc.name and module_path.startswith(exc.name):
            print(f"corolla: command {name!r} is not available in this build ({module_path} missing).",
                  file=sys.stderr)
            return 2
        raise
    try:
        return int(module.main(rest) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
