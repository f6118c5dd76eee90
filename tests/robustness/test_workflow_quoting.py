"""Workflow values with spaces or quotes reach the commands as one argument each (Snakemake's ``{x:q}``)."""
from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys

import pytest

from workflow._repo import no_slurm_bin  # tests/workflow/_repo.py

from ._helpers import REPO, guarded_env

# shell fields left unquoted on purpose: several arguments each built already quoted (launcher, attach, overrides,
# extra, args, students), a flag or nothing (size: --smoke, --quick or ""), a word from a fixed set (command),
# numbers (threads), constrained names (dataset)
UNQUOTED = {"params.launcher", "params.attach", "params.overrides", "params.extra", "params.size", "params.args",
            "params.command", "params.students", "threads", "wildcards.dataset"}
RULE_FILES = sorted((REPO / "workflow" / "rules").glob("*.smk"))


def _shell_blocks(text: str) -> list[str]:
    """The string literals of every ``shell:`` directive."""
    blocks = []
    for m in re.finditer(r"^    shell:\n((?:        .*\n?)+)", text, re.M):
        blocks.append("".join(re.findall(r'"((?:[^"\\]|\\.)*)"', m.group(1))))
    return blocks


@pytest.mark.parametrize("path", RULE_FILES, ids=lambda p: p.name)
def test_every_single_value_shell_field_is_quoted(path):
    unquoted = []
    for block in _shell_blocks(path.read_text()):
        for field in re.findall(r"(?<!\{)\{([^{}]+)\}(?!\})", block):
            name, _, spec = field.partition(":")
            if name not in UNQUOTED and not spec.endswith("q"):
                unquoted.append(field)
    assert not unquoted, f"{path.name}: unquoted shell fields {unquoted}; write {{x:q}}"


def test_data_root_with_space_and_quote_is_one_argument(tmp_path):
    """A dry run prints the commands; each parses back to the exact data_root."""
    for d in ("workflow", "config"):
        shutil.copytree(REPO / d, tmp_path / d)
    shutil.copy2(REPO / "Snakefile", tmp_path / "Snakefile")
    root = "/data sets/it's here"
    env, _ = guarded_env(tmp_path, {"MLFLOW_DISABLE_TELEMETRY": "true"})
    env["PATH"] = no_slurm_bin() + os.pathsep + env["PATH"]      # no 9 s wait for an absent SLURM controller
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-n", "-p", "--cores", "1", "--nolock",
                           "--config", f"data_root={root}", "--", "train_all"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    commands = [line.split("Shell command: ", 1)[1] for line in proc.stdout.splitlines() if "Shell command: " in line]
    prepare = next(shlex.split(c) for c in commands if "lsqbq data" in c)
    assert prepare[prepare.index("--root") + 1] == root
    train = next(shlex.split(c) for c in commands if "lsqbq train" in c)
    assert f"data.root={root}" in train
    assert all(train[i - 1] == "--set" for i, a in enumerate(train) if "=" in a and a.split("=")[0].count(".") == 1
               and not a.startswith(("LSQBQ", "OMP")))
