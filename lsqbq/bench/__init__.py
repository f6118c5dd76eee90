"""Benchmarks (not tests): ``lsqbq bench {quantizers,kernels,models,training,peers} [args]``.

Every benchmark times the candidates side by side in one process and writes ratios to ``results/bench/``. The
options they share, the machine and commit on every CSV row, the atomic writes and the one MLflow run per
invocation (experiment ``lsqbq-bench-<name>``) are :mod:`lsqbq.bench.harness`'s.
"""
from __future__ import annotations

import importlib
import sys

BENCHMARKS = ("quantizers", "kernels", "models", "training", "peers")


USAGE = f"""usage: lsqbq bench {{{','.join(BENCHMARKS)}}} [options]

  quantizers   fit/quantize time per scheme and quantized-layer training steps
  kernels      XNOR/popcount GEMM and conv latency against fp32 and int8 (results/bench/kernels.*)
  models       bitwise ResNet-18 and the trained checkpoints against fp32 (results/bench/models.*)
  training     optimiser-step time of the training recipe per activation scheme
  peers        binary ResNet-18 beside OpenVINO (its BinaryConvolution, fp32, bf16, int8) and ONNX Runtime
               (fp32, int8) (results/bench/peers.*; engines from `pip install 'lsqbq[peers]'`)

`lsqbq bench <name> --help` lists each benchmark's options. Each invocation is one MLflow run in experiment
lsqbq-bench-<name>; --smoke runs tiny shapes once (a check, not a measurement)."""


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
