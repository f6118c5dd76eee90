"""Fixtures of the robustness suite (bad inputs, corrupt files, CLI errors, no network).

Every case asserts the error class or exit code, that the message names the offending key, file, row or
size, and that nothing partial is left behind. Helpers live in ``_helpers.py``:
``run_lsqbq`` (the command line in a subprocess under a network guard), ``assert_cli_error``,
``assert_no_partial_outputs`` and stand-in datasets in the real formats (never downloaded).
"""
from __future__ import annotations

import functools
from pathlib import Path

import pytest

from ._helpers import run_lsqbq, write_cifar, write_imagefolder


@pytest.fixture
def cli(tmp_path):
    """``cli(*args, env=..., cwd=...)`` -> CliResult of ``lsqbq ARGS`` run in ``tmp_path`` under the guard."""
    return functools.partial(run_lsqbq, tmp_path=tmp_path)


@pytest.fixture
def cifar_root(tmp_path) -> Path:
    """A 40 + 16 image CIFAR-10 stand-in (python-version layout)."""
    root = tmp_path / "cifar10"
    write_cifar(root, "cifar10")
    return root


@pytest.fixture
def imagefolder_root(tmp_path) -> Path:
    """Two classes of small JPEGs under train/ and val/."""
    return write_imagefolder(tmp_path / "images")
