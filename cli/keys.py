"""`corolla keys`: create, show and bind Ed25519 identity key files.

    corolla keys new [--out FILE] [--force]
    corolla keys show [FILE]
    corolla keys bind --eth-key-file FILE [--key FILE]

The default key file is $COROLLA_KEY or ~/.corolla/identity.key. Only public keys and
addresses are ever printed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from protocol.binding import Binding, make_binding, verify_binding
from protocol.identity import Identity, KeyFileError, default_key_path


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="corolla keys", description="Create or show an Ed25519 identity key file.")
    sub = p.add_subparsers(dest="action", required=True)
    new = sub.add_parser("new", help="create a new key file (mode 0600)")
    new.add_argument("--out", type=Path, default=None,
                     help="where to write the key (default: $COROLLA_KEY or ~/.corolla/identity.key)")
    new.add_argument("--force", action="store_true", help="replace an existing key file (the old key is lost)")
    new.add_argument("--json", action="store_true", help="print the result as one JSON object")
    show = sub.add_parser("show", help="print the public key (and bound EVM address) of a key file")
    show.add_argument("file", nargs="?", type=Path, default=None,
                      help="key file (default: $COROLLA_KEY or ~/.corolla/identity.key)")
    show.add_argument("--json", action="store_true", help="print the result as one JSON object")
    bind = sub.add_parser("bind", help="bind the key to an EVM address (signed by both keys)")
    bind.add_argument("--eth-key-file", type=Path, required=True,
                      help="file holding the EVM private key as hex (kept out of argv and shell history)")
    bind.add_argument("--key", type=Path, default=None,
                      help="Ed25519 key file to bind (default: $COROLLA_KEY or ~/.corolla/identity.key)")
    bind.add_argument("--json", action="store_true", help="print the binding as one JSON object")
    return p


def _describe(identity: Identity, path: Path) -> dict[str, object]:
    out: dict[str, object] = {"file": str(path), "public_key": identity.public_hex, "evm_address": None}
    if identity.binding_json is not None:
        try:
            binding = Binding.from_json(identity.binding_json)
            if binding.ed25519_key == identity.public_key and verify_binding(binding):
                out["evm_address"] = binding.evm_address
            else:
                out["evm_address_invalid"] = True
        except ValueError:
            out["evm_address_invalid"] = True
    return out


def _print(info: dict[str, object], as_json: bool) -> None:
    if as_json:
        print(json.dumps(info))
        return
    print(f"key file:    {info['file']}")
    print(f"public key:  {info['public_key']}")
    if info.get("evm_address"):
        print(f"evm address: {info['evm_address']}")
    elif info.get("evm_address_invalid"):
        print("evm address: (binding in key file does not verify)")


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.action == "new":
            path = (args.out or default_key_path()).expanduser()
            if path.exists() and not args.force:
                print(f"corolla keys: {path} already exists; pass --force to replace it", file=sys.stderr)
                return 2
            identity = Identity.generate()
            identity.save(path, overwrite=args.force)
            _print(_describe(identity, path), args.json)
        elif args.action == "show":
            path = (args.file or default_key_path()).expanduser()
            _print(_describe(Identity.load(path), path), args.json)
        else:
            path = (args.key or default_key_path()).expanduser()
            identity = Identity.load(path)
            try:
                eth_key = args.eth_key_file.read_text().strip()
                binding = make_binding(identity, eth_key)
            except OSError as exc:
                print(f"corolla keys: cannot read {args.eth_key_file}: {exc.strerror}", file=sys.stderr)
                return 2
            except (ValueError, TypeError):
                print(f"corolla keys: {args.eth_key_file} does not hold a hex EVM private key", file=sys.stderr)
                return 2
            identity.binding_json = binding.to_json()
            identity.save(path, overwrite=True)
            _print(_describe(identity, path), args.json)
    except KeyFileError as exc:
        print(f"corolla keys: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"corolla keys: {exc.strerror}: {exc.filename}", file=sys.stderr)
        return 2
    return 0
