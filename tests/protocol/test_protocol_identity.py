"""Identity key files: created 0600 on first use, refused when open or corrupt, never leaked."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from protocol.identity import Identity, KeyFileError, verify_signature


def test_key_file_is_created_private_and_reloads_the_same_key(tmp_path):
    path = tmp_path / "sub" / "id.key"
    a = Identity.load_or_create(path)
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert oct(path.parent.stat().st_mode & 0o777) == "0o700"
    b = Identity.load_or_create(path)
    assert a.public_key == b.public_key and len(a.public_key) == 32
    assert verify_signature(b.public_key, b"m", a.sign(b"m"))


def test_world_readable_key_file_is_refused(tmp_path):
    path = tmp_path / "id.key"
    Identity.generate().save(path)
    path.chmod(0o644)
    with pytest.raises(KeyFileError, match="chmod 600"):
        Identity.load(path)
    with pytest.raises(KeyFileError, match="readable by others"):
        Identity.load_or_create(path)


@pytest.mark.parametrize("content", [b"", b"not json", b'{"type": "ed25519", "version": 1}',
                                     b'{"type": "ed25519", "version": 1, "private_key": "zz"}',
                                     b'{"type": "rsa", "version": 1, "private_key": "' + b"00" * 32 + b'"}'])
def test_bad_key_file_content_is_refused(tmp_path, content):
    path = tmp_path / "id.key"
    path.write_bytes(content)
    path.chmod(0o600)
    with pytest.raises(KeyFileError, match="not a Corolla"):
        Identity.load(path)


def test_key_file_with_mismatched_public_key_is_refused(tmp_path):
    path = tmp_path / "id.key"
    Identity.generate().save(path)
    body = json.loads(path.read_text())
    body["public_key"] = Identity.generate().public_hex
    path.write_text(json.dumps(body))
    with pytest.raises(KeyFileError, match="does not match"):
        Identity.load(path)


def test_private_key_never_appears_in_repr():
    ident = Identity.generate()
    secret = ident.private_bytes().hex()
    assert secret not in repr(ident) and secret not in str(ident)
    assert ident.public_hex in repr(ident)


def test_concurrent_first_use_yields_one_key(tmp_path):
    path = tmp_path / "id.key"
    code = "import sys; from protocol.identity import Identity; print(Identity.load_or_create(sys.argv[1]).public_hex)"
    procs = [subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE, text=True)
             for _ in range(4)]
    keys = {p.communicate(timeout=60)[0].strip() for p in procs}
    assert len(keys) == 1 and keys == {Identity.load(path).public_hex}
    assert [f for f in os.listdir(tmp_path) if f.startswith(".identity-")] == []


@pytest.mark.parametrize("args", [(b"\x00" * 31, b"m", b"\x00" * 64), (b"\x00" * 32, b"m", b"\x00" * 64),
                                  (b"\x01" * 32, b"m", b"short"), (None, b"m", b"\x00" * 64)])
def test_verify_signature_never_raises(args):
    assert verify_signature(*args) is False
