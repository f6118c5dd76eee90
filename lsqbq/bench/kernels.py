"""Latency of the XNOR/popcount kernels against fp32 and int8 on this CPU: ``lsqbq bench kernels``.

Usage::

    lsqbq bench kernels [--quick | --smoke] [--out results/bench] [--repeats 7] [--threads 1,2] [--backend NAME]

Everything is timed side by side in one process, round-robin (median of >= 7 repeats after warm-up, each repeat
long enough to average out timer noise; the minimum is recorded too), with the load average before and after:

* ``peak``  register-only XOR + popcount + add loop (512-bit VPOPCNTDQ, or 64-bit scalar), in binary MAC/s;
* ``gemm``  the ResNet-18 3x3 convs as im2col GEMMs ``(M = OH*OW, N = C_out, K = 9*C_in)``, batch 1: fp32
            ``torch.mm``, int8 ``torch._int_mm`` and the binary GEMM with its scale epilogue, per kernel
            (``1x1``, ``2x1``, ``2x2``, ``Tx1``, ``3x1``: activation x weight bits from the scheme registry);
* ``conv``  the same layers end to end from an fp32 activation: fp32 ``F.conv2d`` (NCHW and channels_last),
            int8 quantized conv (oneDNN and fbgemm, on an already quantized input; oneDNN's verbose log names
            the kernel that ran) and the bitwise layer (:class:`~lsqbq.kernels.BitwiseConv2d`: fused encode with
            the activation scales, binary convolution, epilogue), each at every thread count, so the thread
            speed-ups are side by side too. Scale modes: ``fitted`` per sample (what the trained models run) for
            every kernel, and ``stored`` moving averages for the multi-bit ones.

Shapes: ImageNet (64@56, 128@28, 256@14, 512@7) and CIFAR (64@32, 128@16, 256@8, 512@4) resolution, batch 1
and 16. ``--quick``: ImageNet shapes, batch 1, 1 thread; ``--smoke``: one ``64@4x4`` layer, one repeat (a check,
not a measurement). Outputs in ``--out``: ``kernels.csv`` (machine, commit, ISA path and load on every row),
``kernels_split.csv``, ``kernels.md`` (machine, load, headline with the targets, tables, the time split of the
1-bit layer), ``kernels_headline.md``, ``kernels.png``; one MLflow run of experiment ``lsqbq-bench-kernels``
(:mod:`lsqbq.bench.harness`). The cases: :mod:`lsqbq.bench.kernel_cases`; the report:
:mod:`lsqbq.bench.kernel_report`. Whole networks and checkpoints: :mod:`lsqbq.bench.models`.
"""
from __future__ import annotations

import warnings

import pandas as pd
import torch

from .harness import BenchRun, parser, thread_counts
from .kernel_cases import CIFAR, IMAGENET, SMOKE, bench_conv, bench_gemm, breakdown, onednn_kernels
from .kernel_report import REPORT_FILES, render, summarise
from .timing import load


def run_cases(shapes: list[tuple[int, int]], batches: list[int], threads_list: list[int], backend: str,
              repeats: int, min_time: float) -> tuple[list[dict], list[dict]]:
    """Every layer of ``shapes`` as a GEMM and end to end at each batch (CIFAR shapes at batch > 1: 1 thread),
    and the 1-bit layer's time split on the ImageNet shapes. Returns ``(rows, split)``."""
    rows: list[dict] = []
    split: list[dict] = []
    for c, hw in shapes:
        rows += bench_gemm(c, hw, backend, repeats, min_time)
        for batch in batches:
            ts = threads_list if not (batch > 1 and (c, hw) in CIFAR) else [1]
            rows += bench_conv(c, hw, batch, ts, backend, repeats, min_time)
            print(f"  {c}@{hw}x{hw} batch {batch} threads {ts} done (load {load():.1f})", flush=True)
        if (c, hw) in IMAGENET and backend != "reference":
            split.append(breakdown(c, hw, backend, repeats, min_time))
    return rows, split


def derived_columns(df: pd.DataFrame) -> pd.DataFrame:
    """Throughputs and the fraction of the binary peak from the timed seconds."""
    df["gmacs"] = df.macs / df.seconds / 1e9
    df["binary_gmacs"] = df.get("binary_macs", pd.Series(dtype=float)) / df.seconds / 1e9
    df["peak_fraction"] = df.binary_gmacs / df.peak_gmacs if "peak_gmacs" in df else float("nan")
    df["ms"] = 1e3 * df.seconds
    return df


def main(argv: list[str] | None = None) -> int:
    args = parser("kernels", __doc__, quick="ImageNet shapes, batch 1, 1 thread (about a minute)", backend=True,
                  render_only="kernels.md, kernels_headline.md and kernels.png").parse_args(argv)
    if args.render_only:
        print(render(pd.read_csv(args.out / "kernels.csv"), args.out))
        return 0
    warnings.filterwarnings("ignore", message=".*quantize_per_tensor.*")  # int8 baseline: deprecation notice
    repeats = 1 if args.smoke else max(7, args.repeats)
    min_time = 0.0 if args.smoke else 0.005 if args.quick else 0.02
    shapes = SMOKE if args.smoke else IMAGENET if args.quick else IMAGENET + CIFAR
    batches = [1] if args.quick or args.smoke else [1, 16]
    with BenchRun("kernels", args.out, backend=args.backend, options=vars(args)) as run:
        threads_list = thread_counts(args.threads, args.quick or args.smoke)
        onednn = "onednn" in torch.backends.quantized.supported_engines and not args.smoke
        int8_kernels = onednn_kernels(shapes) if onednn else {}
        rows, split = run_cases(shapes, batches, threads_list, run.backend, repeats, min_time)
        df = derived_columns(pd.DataFrame(rows))
        df["int8_kernel"] = df.layer.map(int8_kernels).where(df.scheme == "int8")
        df = run.table(df)
        run.write_csv("kernels.csv", df, float_format="%.6g")
        run.write_csv("kernels_split.csv", run.table(split), float_format="%.6g")
        md = render(pd.read_csv(run.path("kernels.csv")), args.out, split, int8_kernels)
        for name in REPORT_FILES:
            run.keep(run.path(name))
        run.record(summarise(df), params={"repeats": repeats, "threads_timed": threads_list})
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
