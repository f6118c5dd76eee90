"""Quantizer cost: ``lsqbq bench quantizers [--out results/bench] [--threads N] [--quick | --smoke]``.

Part 1 times ``quantize(x, scheme)`` (fit + encode) on a weight-like ``(512, 4608)`` and an activation-like
``(256, 50176)`` tensor next to ``torch.sort`` of the same tensor. Part 2 times the forward + backward of a
``QuantConv2d`` training step per activation scheme (ls-1 weights) next to ``gf-2``. All ratios come from the
same run; each time is the median of repeats after warm-up. Part 3 times the fused activation encode with the exact
``ls-2`` / ``ls-T`` fit per image (:func:`lsqbq.kernels.ops.encode_fit`: the fit, then the planes) next to the same
encode with given scales and the quantizer library's full-sort fit of the same rows, on channels_last activations
clamped at 2: 256 images of 16@14x14 (the small ResNet's first stage) and 8 of 64@56x56 (long rows, whose float64
sums round: the fit then follows the full-sort scan's rounding, lsqbq/csrc/fit.cpp).

Writes ``quantizers.csv`` (machine, commit, ISA path and load on every row) and ``quantizers.md`` to ``--out``,
and records them in one MLflow run of experiment ``lsqbq-bench-quantizers`` (:mod:`lsqbq.bench.harness`).
``--smoke``: a ``(4, 64)`` tensor and a ``8@8x8`` layer, one repeat.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch

from ..layers import QuantConv2d
from ..schemes import quantize
from .harness import BenchRun, parser, provenance_line, write_text
from .timing import median_time

SCHEMES = ("ls-1", "gf-2", "gf-3", "gf-4", "ls-T", "ls-2")
TENSORS = {"weight 512x4608": (512, 4608), "activation 256x50176": (256, 50176)}
# (name, C_in = C_out, H = W, batch): ResNet-18 3x3 convs at CIFAR (32x32 input) and ImageNet resolution.
LAYERS = (("cifar stage1 64@32x32 b32", 64, 32, 32), ("imagenet stage3 256@14x14 b32", 256, 14, 32))
LAYER_SCHEMES = ("fp", "ls-1", "gf-2", "ls-T", "ls-2", "gf-3")
ENCODE_CASES = {"256x16@14x14": (256, 16, 14, 14), "8x64@56x56": (8, 64, 56, 56)}
SMOKE_TENSORS = {"smoke 4x64": (4, 64)}
SMOKE_ENCODE = {"smoke 2x8@4x4": (2, 8, 4, 4)}
SMOKE_LAYERS = (("smoke 8@8x8 b2", 8, 8, 2),)


def time_quantizers(repeats: int, tensors: dict[str, tuple[int, int]] = TENSORS) -> list[dict]:
    rows = []
    gen = torch.Generator().manual_seed(0)
    for name, shape in tensors.items():
        x = torch.randn(*shape, generator=gen)
        t_sort = median_time(lambda: torch.sort(x, dim=1), repeats)
        rows.append({"part": "quantizer", "case": name, "scheme": "torch.sort", "ms": 1e3 * t_sort, "ratio": 1.0,
                     "reference": "torch.sort"})
        for scheme in SCHEMES:
            t = median_time(lambda: quantize(x, scheme), repeats)
            rows.append({"part": "quantizer", "case": name, "scheme": scheme, "ms": 1e3 * t, "ratio": t / t_sort,
                         "reference": "torch.sort"})
    return rows


def time_layers(repeats: int, layers=LAYERS) -> list[dict]:
    rows = []
    for name, ch, hw, batch in layers:
        x = torch.randn(batch, ch, hw, hw)
        times = {}
        for scheme in LAYER_SCHEMES:
            torch.manual_seed(0)
            layer = QuantConv2d(ch, ch, 3, padding=1, x_quant=scheme, w_quant="ls-1", clamp=2.0)

            def step():
                layer.zero_grad(set_to_none=True)
                inp = x.clone().requires_grad_()
                layer(inp).sum().backward()

            times[scheme] = median_time(step, repeats)
        for scheme, t in times.items():
            rows.append({"part": "layer fwd+bwd", "case": name, "scheme": scheme, "ms": 1e3 * t,
                         "ratio": t / times["gf-2"], "reference": "gf-2"})
    return rows


def time_encode_fits(repeats: int, cases: dict[str, tuple[int, ...]] = ENCODE_CASES) -> list[dict]:
    """Part 3 (module docstring): ratios against the encode with given scales (the planes alone)."""
    from ..kernels import ops
    from ..schemes import fit

    rows = []
    gen = torch.Generator().manual_seed(0)
    for name, shape in cases.items():
        x = torch.randn(*shape, generator=gen).contiguous(memory_format=torch.channels_last)
        y = x.clamp(-2.0, 2.0).permute(0, 2, 3, 1).reshape(shape[0], -1)  # each image's values, as the encode reads
        given = torch.ones(shape[0], 2)
        times = {"encode, given scales": median_time(
            lambda: ops.encode_fit(x, 2, ops.FIT_GIVEN, scales=given, clamp=2.0), repeats)}
        for scheme, code, mask in (("ls-2", ops.FIT_LS2, False), ("ls-T", ops.FIT_TERNARY, True)):
            times[f"encode, {scheme} fit"] = median_time(
                lambda: ops.encode_fit(x, 2, code, clamp=2.0, mask=mask), repeats)
            times[f"{scheme} full-sort fit"] = median_time(lambda: fit(y, scheme), repeats)
        for scheme, t in times.items():
            rows.append({"part": "encode with the exact fit", "case": name, "scheme": scheme, "ms": 1e3 * t,
                         "ratio": t / times["encode, given scales"], "reference": "encode, given scales"})
    return rows


def to_markdown(df: pd.DataFrame, info: dict) -> str:
    """Milliseconds and the ratio to each part's reference, one table per part (``DataFrame.to_markdown``)."""
    parts = [f"# Quantizer cost\n\nMachine: {info['cpu']}, {info['threads']} torch threads, torch {info['torch']}.\n"
             "Median wall time; ratio against the reference measured in the same run."]
    for part, group in df.groupby("part", sort=False):
        cells = group.assign(cell=[f"{m:.1f} ms ({r:.2f}x)" for m, r in zip(group["ms"], group["ratio"])])
        table = cells.pivot(index="scheme", columns="case", values="cell").reindex(group["scheme"].unique())
        parts.append(f"## {part} (ratio vs {group['reference'].iloc[0]})\n\n" + table.to_markdown())
    if provenance_line(df):
        parts.append(provenance_line(df))
    return "\n\n".join(parts) + "\n"


def render(out: Path) -> str:
    """Rewrite ``quantizers.md`` from ``quantizers.csv`` in ``out`` (no timing)."""
    df = pd.read_csv(out / "quantizers.csv")
    md = to_markdown(df, df.iloc[0].to_dict())
    write_text(out / "quantizers.md", md)
    return md


def main(argv: list[str] | None = None) -> int:
    args = parser("quantizers", __doc__, threads="one", quick="fewer repeats, one layer shape",
                  render_only="quantizers.md").parse_args(argv)
    if args.render_only:
        print(render(args.out))
        return 0
    repeats = 1 if args.smoke else 3 if args.quick else args.repeats
    tensors = SMOKE_TENSORS if args.smoke else TENSORS
    layers = SMOKE_LAYERS if args.smoke else LAYERS[:1] if args.quick else LAYERS
    with BenchRun("quantizers", args.out, threads=args.threads, options=vars(args)) as run:
        encode = SMOKE_ENCODE if args.smoke else ENCODE_CASES
        rows = time_quantizers(repeats, tensors) + time_layers(repeats, layers) + time_encode_fits(repeats, encode)
        df = run.table([{**r, "threads": torch.get_num_threads()} for r in rows])
        run.write_csv("quantizers.csv", df, float_format="%.4f")
        md = to_markdown(df, df.iloc[0].to_dict())
        run.write_text("quantizers.md", md)
        run.record({f"{r.part} {r.case} {r.scheme} ratio": r.ratio for r in df.itertuples()},
                   params={"repeats": repeats})
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
