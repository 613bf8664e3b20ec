"""The `corolla` dispatcher: help, unknown commands, and lazy imports."""

import subprocess
import sys

from cli.main import COMMANDS, main


def test_help_lists_every_command(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in COMMANDS:
        assert name in out


def test_unknown_command_is_one_clear_line(capsys):
    assert main(["frobnicate"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown command 'frobnicate'" in err[0]


def test_every_command_module_exists_and_has_main():
    import importlib

    for name, (module_path, _) in COMMANDS.items():
        module = importlib.import_module(module_path)
        assert callable(getattr(module, "main", None)), f"{name}: {module_path}.main missing"


def test_ledger_command_does_not_import_torch():
    code = "import sys; from cli.main import main; main(['ledger', '--help']) if False else None; import ledger.cli; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
