import subprocess
import sys

from lsqbq.cli import COMMANDS, main


def test_help_lists_every_command(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in COMMANDS:
        assert name in out


def test_unknown_command_is_a_clear_error(capsys):
    assert main(["trian"]) == 2
    err = capsys.readouterr().err
    assert "unknown command 'trian'" in err and "train" in err


def test_no_arguments_prints_usage_and_fails(capsys):
    assert main([]) == 2


def test_console_script_runs():
    out = subprocess.run([sys.executable, "-m", "lsqbq.cli", "--help"], capture_output=True, text=True, check=True)
    assert "bench" in out.stdout
