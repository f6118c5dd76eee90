"""Quantizer cost: ``lsqbq bench quantizers [--out results/bench] [--threads N] [--quick | --smoke]``.

Part 1 times ``quantize(x, scheme)`` (fit + encode) on a weight-like ``(512, 4608)`` and an activation-like
``(256, 50176)`` tensor next to ``torch.sort`` of the same tensor. Part 2 times the forward + backward of a
``QuantConv2d`` training step per activation scheme (ls-1 weights) next to ``gf-2``. All ratios come from the
same run; each time is the median of repeats after warm-up.

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
SMOKE_TENSORS = {"smoke 4x64": (4, 64)}
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
        rows = time_quantizers(repeats, tensors) + time_layers(repeats, layers)
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
