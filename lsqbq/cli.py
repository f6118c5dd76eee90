"""Command line: ``lsqbq [--debug] <command> [args]``.

A thin dispatcher; every command lives in its own module with its own ``main(argv)``, so ``lsqbq train ...``
and ``python -m lsqbq.train ...`` run the same code. Errors of the :class:`~lsqbq.errors.LsqbqError` family
print as one line, ``lsqbq <command>: <message>``, and exit with the class's code; a traceback is shown only
with ``--debug`` or ``LSQBQ_DEBUG=1``. Modules run with ``python -m`` get the same handling through
:func:`run_command`.
"""
from __future__ import annotations

import importlib
import logging
import os
import sys
import traceback

from .allocator import keep_large_buffers

__all__ = ["COMMANDS", "main", "run_command", "debug_enabled"]

# command -> (module, one-line summary)
COMMANDS = {
    "data": ("lsqbq.data", "prepare or verify a dataset and print its content hash"),
    "train": ("lsqbq.train", "train, resume or evaluate one model from a YAML config"),
    "evaluate": ("lsqbq.evaluate", "evaluate a checkpoint on the test split"),
    "analyze": ("lsqbq.analysis", "quantization-error, post-training and angle analyses of a checkpoint"),
    "bench": ("lsqbq.bench", "benchmarks: quantizers | kernels | models | training"),
    "tables": ("lsqbq.tables", "build the results tables and figures"),
    "tracking": ("lsqbq.tracking", "MLflow store helpers: init | stale [--close] | relocate | attach"),
}
# command groups whose help the dispatcher prints itself: a summary, and sub-command -> one-line summary
GROUP_SUMMARY = {
    "bench": "Benchmarks (not tests): each times its candidates side by side in one process and writes a CSV "
             "and a markdown table.",
}
GROUPS = {
    "bench": {
        "quantizers": "time fitting and quantizing with every scheme",
        "kernels": "latency of the XNOR/popcount kernels against fp32 and int8",
        "models": "whole-model latency: bitwise ResNet-18 and the trained checkpoints against fp32",
        "training": "training throughput (optimiser steps per second) of every scheme",
    },
}

EXIT_CODES_HELP = ("exit codes: 0 success, 1 other error, 2 usage or config error, 3 data error, "
                   "4 checkpoint error, 5 invalid input, 6 training error, 130 interrupted")


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("lsqbq")
    except Exception:  # noqa: BLE001 - not installed as a package: read the source tree's version
        from . import __version__

        return __version__


def _help() -> str:
    width = max(map(len, COMMANDS))
    lines = [
        "usage: lsqbq [--debug] [--version] [-h] <command> [args]",
        "",
        "Least-squares binary quantization of neural networks: train, evaluate, analyse, benchmark.",
        "",
        "commands:",
        *(f"  {name:<{width}}  {summary}" for name, (_, summary) in COMMANDS.items()),
        "",
        "options:",
        "  -h, --help  show this help and exit",
        "  --version   print the version and exit",
        "  --debug     show full tracebacks of errors (also LSQBQ_DEBUG=1)",
        "",
        "Run `lsqbq <command> --help` for the options of a command.",
        EXIT_CODES_HELP,
    ]
    return "\n".join(lines)


def _group_help(command: str) -> str:
    subs = GROUPS[command]
    width = max(map(len, subs))
    lines = [
        f"usage: lsqbq {command} {{{','.join(subs)}}} [options]",
        "",
        GROUP_SUMMARY[command],
        "",
        "commands:",
        *(f"  {name:<{width}}  {summary}" for name, summary in subs.items()),
        "",
        f"Run `lsqbq {command} <command> --help` for its options.",
    ]
    return "\n".join(lines)


def debug_enabled() -> bool:
    """True when tracebacks are wanted (``LSQBQ_DEBUG`` set to anything but ``0``/empty)."""
    return os.environ.get("LSQBQ_DEBUG", "0") not in ("", "0", "false", "no")


class _NoCudaRuntimeWarning(logging.Filter):
    """Drop torch's "No CUDA runtime is found" warning (cpp_extension import on a CPU machine with nvcc)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("No CUDA runtime is found")


def quiet_cuda_home_warning() -> None:
    """Install the filter once; the C++ builds here never use CUDA."""
    logger = logging.getLogger("torch.utils.cpp_extension")
    if not any(isinstance(f, _NoCudaRuntimeWarning) for f in logger.filters):
        logger.addFilter(_NoCudaRuntimeWarning())


def _one_line(text) -> str:
    """The message on one line; an error re-raised from a DataLoader worker is reduced to its own message."""
    lines = [part.strip() for part in str(text).splitlines() if part.strip()]
    if lines and lines[0].startswith("Caught ") and any(p.startswith("Original Traceback") for p in lines):
        last = lines[-1]
        head, sep, rest = last.partition(": ")
        lines = [rest if sep and head.replace(".", "").replace("_", "").isalnum() else last]
    return "; ".join(lines)


def _describe(e: BaseException) -> tuple[int, str] | None:
    """(exit code, one-line message) of an exception, or None for one that must propagate."""
    from .errors import LsqbqError

    if isinstance(e, LsqbqError):
        return e.exit_code, _one_line(e) or type(e).__name__
    if isinstance(e, KeyboardInterrupt):
        return 130, "interrupted"
    if isinstance(e, OSError):  # permissions, a directory given for a file, a full disk: say which file
        return 1, _one_line(e) or type(e).__name__
    if isinstance(e, Exception):  # an unexpected failure: one line, the traceback on request
        message = f"unexpected {type(e).__name__}: {_one_line(e)}"
        if not debug_enabled():
            message += "; rerun with `lsqbq --debug ...` for the traceback and report it"
        return 1, message
    return None


def run_command(command: str, func, argv: list[str] | None = None) -> int:
    """Run ``func(argv)`` (a command's ``main``) and turn errors into one line on stderr and an exit code."""
    quiet_cuda_home_warning()
    keep_large_buffers()
    try:
        return int(func(argv) or 0)
    except SystemExit:
        raise
    except BaseException as e:  # noqa: BLE001 - every error ends as one line and an exit code
        described = _describe(e)
        if described is None:
            raise
        if debug_enabled():
            traceback.print_exc()
    code, message = described
    print(f"lsqbq {command}: {message}", file=sys.stderr)
    return code


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``lsqbq`` console script; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    while argv and argv[0] in ("--debug", "--version", "-V"):
        flag = argv.pop(0)
        if flag == "--debug":
            os.environ["LSQBQ_DEBUG"] = "1"
        else:
            print(f"lsqbq {_version()}")
            return 0
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_help(), file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        hint = f"unknown option {command!r}" if command.startswith("-") else f"unknown command {command!r}"
        print(f"lsqbq: {hint}; choose one of {', '.join(COMMANDS)} (see `lsqbq --help`)", file=sys.stderr)
        return 2
    if command in GROUPS and (not rest or rest[0] in ("-h", "--help")):
        print(_group_help(command), file=sys.stdout if rest else sys.stderr)
        return 0 if rest else 2
    module = COMMANDS[command][0]
    return run_command(command, lambda args: importlib.import_module(module).main(args), rest)


if __name__ == "__main__":
    sys.exit(main())
