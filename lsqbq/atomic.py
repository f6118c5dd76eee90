"""Atomic file writes: a temporary file beside the target, fsync, then ``os.replace`` over it.

A reader (or a process killed mid-write) sees either the previous complete file or the new one, never half of
one. The temporary file ``.<name>.<random>.tmp`` is created with mode ``0o666`` filtered by the process umask,
like ``open(path, "w")`` (``0644`` under umask ``022``), so the renamed file gets the permissions any other
written file would: ``tempfile.mkstemp`` would create it ``0600`` whatever the umask. It is removed on any
exception; one left by ``kill -9`` is removed by the next write of the same path (:func:`remove_stale_tmp`).

Every file lsqbq writes atomically (checkpoints, ``metrics.json``, prediction logs) goes through
:func:`atomic_write`.
"""
from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import IO, Callable

__all__ = ["atomic_write", "write_text_atomic", "remove_stale_tmp", "tmp_glob"]

_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
_TRIES = 100  # names to try before giving up (a clash needs two equal 64-bit random tokens)


def tmp_glob(path: str | Path) -> str:
    """Glob pattern of the temporary files of ``path`` (relative to its directory)."""
    return f".{Path(path).name}.*.tmp"


def remove_stale_tmp(path: str | Path) -> list[Path]:
    """Delete temporary files a killed :func:`atomic_write` of ``path`` left behind; returns what was removed."""
    path = Path(path)
    removed = []
    if path.parent.is_dir():
        for tmp in path.parent.glob(tmp_glob(path)):
            try:
                tmp.unlink()
                removed.append(tmp)
            except FileNotFoundError:
                pass
    return removed


def _create_tmp(path: Path) -> tuple[int, Path]:
    """Open a new temporary file beside ``path`` with mode ``0o666 & ~umask`` (``O_EXCL``: never an existing one)."""
    for _ in range(_TRIES):
        tmp = path.parent / f".{path.name}.{secrets.token_hex(8)}.tmp"
        try:
            return os.open(tmp, _FLAGS, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"{path.parent}: could not create a temporary file for {path.name} "
                          f"({_TRIES} names taken)")


def atomic_write(path: str | Path, mode: str, write: Callable[[IO], object]) -> Path:
    """``write(f)`` into a temporary file beside ``path`` (opened with ``mode``, ``"w"`` or ``"wb"``), fsync, then
    rename it over ``path`` (atomic on POSIX). Returns ``path``.

    The file ends with the permissions ``open(path, mode)`` would give a new file (``0o666`` less the umask). The
    parent directory must exist. The temporary file is removed on any exception, ``KeyboardInterrupt`` included.
    """
    path = Path(path)
    remove_stale_tmp(path)
    fd, tmp = _create_tmp(path)
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write a small text file (``metrics.json``) with :func:`atomic_write`: a reader never sees half of it."""
    return atomic_write(path, "w", lambda f: f.write(text))
