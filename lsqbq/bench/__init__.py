"""Benchmarks (not tests): ``lsqbq bench {quantizers,kernels,training} [args]``.

Every benchmark times the candidates side by side in one process and writes ratios to ``results/bench/``.
"""
from __future__ import annotations

import importlib
import sys

BENCHMARKS = ("quantizers", "kernels", "training")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in BENCHMARKS:
        print(f"usage: lsqbq bench {{{','.join(BENCHMARKS)}}} [options]", file=sys.stderr)
        return 2
    module = importlib.import_module(f"lsqbq.bench.{argv[0]}")
    return int(module.main(argv[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main())
