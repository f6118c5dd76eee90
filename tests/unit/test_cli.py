import subprocess
import sys

import pytest

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


def test_version(capsys):
    import lsqbq

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"lsqbq {lsqbq.__version__}"


def test_bench_help_exits_0(capsys):
    assert main(["bench", "--help"]) == 0
    assert "kernels" in capsys.readouterr().out


def _options_without_help(args, capsys) -> list[str]:
    """Options in ``lsqbq ARGS --help`` that have no help text (argparse prints the flag alone)."""
    import re

    with pytest.raises(SystemExit):
        main([*args, "--help"])
    lines = capsys.readouterr().out.splitlines()
    bare = []
    for i, line in enumerate(lines):
        m = re.match(r"^  (-\S.*?)(?:\s{2,}(\S.*))?$", line)
        if not m or m.group(2):
            continue
        follow = lines[i + 1] if i + 1 < len(lines) else ""
        if re.match(r"^\s{6,}[^\s-]", follow):  # the help text wrapped onto the next line
            continue
        bare.append(m.group(1).split(",")[0].split()[0])
    return bare


@pytest.mark.parametrize("args", [
    ["data", "prepare"], ["data", "hash"], ["train"], ["evaluate"], ["analyze", "error"], ["analyze", "ptq"],
    ["analyze", "angles"], ["tables"],
    ["bench", "quantizers"], ["bench", "kernels"], ["bench", "training"],
], ids=lambda a: "-".join(a))
def test_every_option_has_help_text(capsys, args):
    assert _options_without_help(args, capsys) == []
