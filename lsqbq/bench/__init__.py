"""Benchmarks (not tests): ``lsqbq bench {quantizers,kernels,models,training} [args]``.

Every benchmark times the candidates side by side in one process and writes ratios to ``results/bench/``.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Callable

BENCHMARKS = ("quantizers", "kernels", "models", "training")


USAGE = f"""usage: lsqbq bench {{{','.join(BENCHMARKS)}}} [options]

  quantizers   fit/quantize time per scheme and quantized-layer training steps
  kernels      XNOR/popcount GEMM and conv latency against fp32 and int8 (results/bench/kernels.*)
  models       bitwise ResNet-18 and the trained checkpoints against fp32 (results/bench/models.*)
  training     optimiser-step time of the training recipe per activation scheme

`lsqbq bench <name> --help` lists each benchmark's options."""


def int_list(minimum: int) -> Callable[[str], list[int]]:
    """An argparse ``type``: ``"1,2,4"`` -> ``[1, 2, 4]``, every value an integer >= ``minimum`` (otherwise a
    usage error that quotes the value)."""
    def parse(text: str) -> list[int]:
        try:
            values = [int(v) for v in text.split(",")]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
        for v in values:
            if v < minimum:
                raise argparse.ArgumentTypeError(f"every value must be >= {minimum}, got {v}")
        return values
    return parse


def int_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse ``type``: one integer >= ``minimum`` (otherwise a usage error that quotes the value)."""
    def parse(text: str) -> int:
        values = int_list(minimum)(text)
        if len(values) != 1:
            raise argparse.ArgumentTypeError(f"expected one integer, got {text!r}")
        return values[0]
    return parse


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    if not argv or argv[0] not in BENCHMARKS:
        print(USAGE, file=sys.stderr)
        return 2
    module = importlib.import_module(f"lsqbq.bench.{argv[0]}")
    return int(module.main(argv[1:]) or 0)


if __name__ == "__main__":
    from ..cli import run_command

    sys.exit(run_command("bench", main))
