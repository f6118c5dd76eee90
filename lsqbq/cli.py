"""Command line: ``lsqbq <command> [args]``.

A thin dispatcher; every command lives in its own module with its own ``main(argv)``
so that ``lsqbq train ...`` and ``python -m lsqbq.train ...`` are the same thing.

Commands:
    data       prepare and verify datasets (``lsqbq data prepare fashion-mnist``) -> lsqbq.data
    train      train (or resume, or evaluate) one model from a YAML config   -> lsqbq.train
    evaluate   evaluate a checkpoint on the test split                        -> lsqbq.evaluate
    analyze    quantization-error, post-training and angle analyses            -> lsqbq.analysis
    bench      benchmarks: quantizers | kernels | training                     -> lsqbq.bench
    tables     build results tables and figures                               -> lsqbq.tables
"""
from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "data": "lsqbq.data",
    "train": "lsqbq.train",
    "evaluate": "lsqbq.evaluate",
    "analyze": "lsqbq.analysis",
    "bench": "lsqbq.bench",
    "tables": "lsqbq.tables",
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"lsqbq: unknown command {command!r}; choose one of {sorted(COMMANDS)}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[command])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
