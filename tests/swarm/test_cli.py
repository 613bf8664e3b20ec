"""The `corolla dht`, `corolla node`, `corolla generate` and `corolla demo` commands."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.swarm.conftest import ROOT


def corolla(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cli.main", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


def test_generate_prints_the_same_tokens_as_transformers(llama_swarm, reference_model):
    from transformers import AutoTokenizer

    result = corolla("generate", str(llama_swarm.model), "hello swarm", "--initial-peers", *llama_swarm.peers,
                     "--max-new-tokens", "12", "--token-ids")
    assert result.returncode == 0, result.stderr[-2000:]
    ids = AutoTokenizer.from_pretrained(llama_swarm.model)("hello swarm", return_tensors="pt").input_ids
    expected = reference_model(llama_swarm.model).generate(ids, max_new_tokens=12, do_sample=False)
    assert result.stdout.split() == [str(t) for t in expected[0].tolist()]


@pytest.mark.parametrize(("args", "message"), [
    (["dht", "--port", "70000"], "--port must be in 0..65535"),
    (["node", "some-model", "--blocks", "4:2", "--initial-peers", "/ip4/127.0.0.1/tcp/1"], "need 0 <= START < END"),
    (["node", "some-model", "--blocks", "x", "--initial-peers", "/ip4/127.0.0.1/tcp/1"], "START:END"),
    (["node", "/nonexistent/model", "--blocks", "0:1", "--initial-peers", "/ip4/127.0.0.1/tcp/1"], "model"),
    (["node", "some-model", "--blocks", "0:1", "--initial-peers", "/ip4/127.0.0.1/tcp/1", "--session-idle-timeout",
      "0"], "--session-idle-timeout must be a number of seconds > 0, got 0"),
    (["generate", "m", "p", "--initial-peers", "x", "--max-new-tokens", "0"], "--max-new-tokens must be >= 1"),
    (["demo", "--nodes", "0"], "must be >= 1"),
])
def test_user_mistakes_get_one_line_and_exit_code_2(args, message):
    result = corolla(*args, timeout=120)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_demo_generates_like_transformers_and_tunes_a_prompt(tmp_path):
    result = corolla("demo", "--nodes", "2", "--workdir", str(tmp_path), "--tune-steps", "3",
                     "--max-new-tokens", "8", timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "local transformers generated the same tokens" in result.stdout
    assert "loss went down" in result.stdout
