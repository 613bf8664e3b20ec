"""`corolla demo`: a whole swarm on 127.0.0.1, generating and fine-tuning through it.

A sequence of small steps (each a function) so later features slot in between them:
make a model -> start a DHT peer -> start nodes covering the blocks -> generate through
the swarm and compare with local transformers -> prompt-tune through the swarm. Every
process started here is stopped on exit, Ctrl-C included.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class Service:
    name: str
    proc: subprocess.Popen[bytes]
    ready_file: Path
    log: Path
    ready: dict[str, Any]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def say(message: str) -> None:
    print(f"[demo] {message}", flush=True)


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="corolla demo", description="Start a swarm on 127.0.0.1 and use it.")
    p.add_argument("--model", help="model directory to serve (default: make a small Llama)")
    p.add_argument("--nodes", type=int, default=3, help="number of nodes to split the blocks over (default 3)")
    p.add_argument("--workdir", help="where logs, ready files and the model go (default: a temp dir)")
    p.add_argument("--max-new-tokens", type=int, default=24, help="tokens to generate (default 24)")
    p.add_argument("--tune-steps", type=int, default=6, help="prompt-tuning steps (default 6)")
    p.add_argument("--no-chain", action="store_true", help="skip on-chain settlement even if anvil is installed")
    p.add_argument("--quick", action="store_true", help="skip the priority-under-load part")
    p.add_argument("--hold", action="store_true", help="keep every service up at the end until Ctrl-C")
    p.add_argument("--ready-file", help="once the demo has run and its services are up (with --hold: while "
                                        "holding), write {pid, peer_id, maddrs, ledger_url, dashboard, model, ok} "
                                        "as JSON here")
    return p.parse_args(argv)


def ensure_model(model: str | None, workdir: Path) -> Path:
    if model:
        return Path(model)
    from models.make_model import make_model

    say("making a small Llama (4 blocks, hidden 128, seeded random weights)")
    return make_model("llama", workdir / "model", layers=4, hidden=128, seed=0)


def start_service(name: str, args: list[str], workdir: Path) -> Service:
    ready, log = workdir / f"{name}.ready.json", workdir / f"{name}.log"
    ready.unlink(missing_ok=True)
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "cli.main", *args, "--ready-file", str(ready)],
                                stdout=out, stderr=subprocess.STDOUT, cwd=Path(__file__).resolve().parents[1])
    return Service(name, proc, ready, log, {})


def wait_ready(service: Service, timeout: float = 180.0) -> Service:
    deadline = time.monotonic() + timeout
    while not service.ready_file.exists():
        if service.proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{service.name} failed to start; see {service.log}:\n"
                               f"{service.log.read_text()[-2000:]}")
        time.sleep(0.1)
    service.ready = json.loads(service.ready_file.read_text())
    return service


def split_blocks(num_blocks: int, parts: int) -> list[tuple[int, int]]:
    parts = max(1, min(parts, num_blocks))
    bounds = [round(i * num_blocks / parts) for i in range(parts + 1)]
    return list(zip(bounds[:-1], bounds[1:], strict=True))


def start_swarm(model: Path, nodes: int, workdir: Path, stack: ExitStack,
                operator_keys: list[Path] | None = None, ledger_url: str | None = None) -> list[str]:
    from models.manifest_builder import load_manifest

    dht = start_service("dht", ["dht"], workdir)
    stack.callback(dht.stop)
    peers = wait_ready(dht).ready["maddrs"]
    say(f"DHT bootstrap peer at {peers[0]}")
    spans = split_blocks(load_manifest(model).num_blocks, nodes)
    services = []
    for i, (start, end) in enumerate(spans):
        extra = ["--key", str(operator_keys[i])] if operator_keys else []
        if ledger_url:
            extra += ["--ledger", ledger_url, "--outbox", str(workdir / f"node{i}.outbox.sqlite")]
        service = start_service(f"node{i}", ["node", str(model), "--blocks", f"{start}:{end}",
                                             "--initial-peers", *peers, *extra], workdir)
        stack.callback(service.stop)
        services.append(service)
    for service in services:
        ready = wait_ready(service).ready
        say(f"{service.name} serves blocks {ready['blocks'][0]}:{ready['blocks'][1]} "
            f"({ready['throughput']:.0f} steps/s) as {ready['peer_id'][-8:]}")
    return peers


def generate_and_compare(client: Any, model: Path, max_new_tokens: int) -> bool:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model)
    ids = tokenizer("the swarm says", return_tensors="pt").input_ids
    started = time.perf_counter()
    ours = client.generate(ids, max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens, do_sample=False)
    elapsed = time.perf_counter() - started
    local = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32).eval()
    theirs = local.generate(ids, max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens, do_sample=False)
    same = ours.tolist() == theirs.tolist()
    say(f"swarm generated {max_new_tokens} tokens in {elapsed:.2f} s: {tokenizer.decode(ours[0])!r}")
    say(f"local transformers generated the {'same' if same else 'DIFFERENT'} tokens")
    return same


def prompt_tune(client: Any, model: Path, steps: int) -> list[float]:
    """Train a 4-vector soft prompt through the swarm (remote forward + backward)."""
    import torch
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model)
    ids = tokenizer("corolla blossoms in the swarm", return_tensors="pt").input_ids
    embed = client.get_input_embeddings()
    soft = torch.nn.Parameter(torch.randn(1, 4, embed.weight.shape[1]) * 0.02)
    optimizer = torch.optim.Adam([soft], lr=0.05)
    losses = []
    for step in range(steps):
        inputs = torch.cat([soft, embed(ids).detach()], dim=1)
        labels = torch.cat([torch.full((1, 4), -100), ids], dim=1)
        loss = client(inputs_embeds=inputs, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        say(f"prompt tuning step {step + 1}/{steps}: loss {loss.item():.4f}")
    return losses


def start_chain(workdir: Path, stack: ExitStack) -> dict[str, Any] | None:
    from cli.demo_economy import find_anvil

    if find_anvil() is None:
        say("no local chain (anvil not found): settlement skipped")
        return None
    chain = start_service("chain", ["chain", "devnet", "--dir", str(workdir / "chain")], workdir)
    stack.callback(chain.stop)
    info = wait_ready(chain).ready
    say(f"local chain at {info['rpc']}: Settlement {info['settlement']}")
    return info


def run(args: argparse.Namespace) -> int:
    from cli import demo_economy as eco

    with ExitStack() as stack:
        workdir = Path(args.workdir) if args.workdir else Path(stack.enter_context(tempfile.TemporaryDirectory()))
        workdir.mkdir(parents=True, exist_ok=True)
        model = ensure_model(args.model, workdir)
        keys = eco.Keys.create(workdir, max(1, min(args.nodes, 64)))
        chain = None if args.no_chain else start_chain(workdir, stack)
        ledger = start_service("ledger", eco.ledger_args(workdir, keys, 100_000, chain), workdir)
        stack.callback(ledger.stop)
        url = wait_ready(ledger).ready["url"]
        say(f"ledger at {url} (dashboard: {url}/dashboard)")
        api = eco.LedgerApi(url)
        stack.callback(api.close)
        eco.register_manifest(api, model, keys.admin)
        address = eco.bind_operator(api, keys.operators[0], chain["keys"]["operator"]) if chain else None
        peers = start_swarm(model, args.nodes, workdir, stack, keys.operators, url)
        from client import AutoDistributedModelForCausalLM

        client = AutoDistributedModelForCausalLM.from_pretrained(str(model), initial_peers=peers,
                                                                 key=str(keys.client))
        stack.callback(client.close)
        same = generate_and_compare(client, model, args.max_new_tokens)
        losses = prompt_tune(client, model, args.tune_steps)
        down = len(losses) > 1 and losses[-1] < losses[0]
        say(f"loss went {'down' if down else 'NOT down'}: {losses[0]:.4f} -> {losses[-1]:.4f}")
        say(f"client holds {len(client.swarm.receipts.receipts)} counter-signed receipts")

        eco.wait_for_receipts(api, minimum=1)
        say("verifier spot-checks receipts (challenges nodes, recomputes random blocks)")
        eco.run_verifier(model, url, keys, peers, workdir)
        eco.close_epoch(api, keys.admin)
        earned = eco.print_earnings(api, keys)
        ok = same and down and earned.get("operator0", 0) > 0

        if not args.quick:
            budget = max(1, min(earned.get("operator0", 0), 5000))
            say(f"operator0 spends up to {budget} of its earned credits for priority while free clients load the swarm")
            unloaded, paid_ms, free_ms, spent = eco.priority_under_load(model, peers, url, keys.operators[0],
                                                                        budget, workdir, keys.client)
            say(f"per token: unloaded {unloaded:.1f} ms; under bulk load: paying {paid_ms:.1f} ms, "
                f"free {free_ms:.1f} ms; spent {spent} credits (benchmarks/priority.py measures the queue)")

        if chain is not None and address is not None:
            eco.withdraw(api, keys.operators[0])
            eco.close_epoch(api, keys.admin)  # anchors this epoch's root on the local chain
            balance, cumulative = eco.claim_on_chain(api, chain, chain["keys"]["operator"], address)
            say(f"operator0 claimed on-chain: token balance {balance}, ledger cumulative {cumulative} "
                f"({'equal' if balance == cumulative else 'DIFFERENT'})")
            ok = ok and balance == cumulative
        if args.ready_file:
            from node.ready_file import write_ready_file

            write_ready_file(args.ready_file, {
                "pid": os.getpid(), "peer_id": peers[0].rsplit("/p2p/", 1)[-1], "maddrs": peers,
                "ledger_url": url, "dashboard": f"{url}/dashboard", "model": str(model), "ok": ok})
        if args.hold:
            say(f"holding; dashboard at {url}/dashboard — Ctrl-C to stop")
            try:
                while True:
                    time.sleep(1)
            except KeyboardInterrupt:
                pass
        say("stopping everything")
        return 0 if ok else 1


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if args.nodes < 1 or args.max_new_tokens < 1 or args.tune_steps < 1:
        print("corolla demo: --nodes, --max-new-tokens and --tune-steps must be >= 1", file=sys.stderr)
        return 2
    if args.model and not Path(args.model).is_dir():
        print(f"corolla demo: --model {args.model} is not a directory", file=sys.stderr)
        return 2

    def stop_on_sigterm(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt  # unwinds run()'s ExitStack, which stops every child process

    signal.signal(signal.SIGTERM, stop_on_sigterm)
    try:
        return run(args)
    except KeyboardInterrupt:
        say("interrupted: stopped every process the demo started")
        return 130
