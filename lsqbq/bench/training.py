"""Training throughput per scheme: ``lsqbq bench training [--config FILE] [--out results/bench] [--threads N]``.

Times one optimiser step (forward, backward, Adam update) of the default profile's model on a batch of
the profile's shape, for the fp/fp teacher and for every activation scheme with 1-bit ``ls-1`` weights.
The candidates are timed round-robin (``--rounds`` rounds, median per scheme) so that a slow spell of a
shared machine hits all of them alike. Writes ``training.csv`` (images/s and the ratio to fp/fp) to ``--out``.
KD's teacher forward is not included: it costs the same for every student. The CSV is recorded in an MLflow run of
experiment ``bench`` (``LSQBQ_TRACKING=0``: none; a store error is a warning).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F

from ..config import load_config
from ..data import dataset_info
from ..models import build
from ..config import model_options
from . import int_at_least
from .timing import machine_info, time_group

CONFIGS = (("fp", "fp"), ("fp", "ls-1"), ("ls-1", "ls-1"), ("gf-2", "ls-1"), ("ls-T", "ls-1"), ("ls-2", "ls-1"),
           ("gf-3", "ls-1"))


def _step_fn(cfg, x_quant: str, w_quant: str, batch: int):
    info = dataset_info(cfg.data.name, cfg.data.root)
    cfg.model.x_quant, cfg.model.w_quant = x_quant, w_quant
    torch.manual_seed(0)
    model = build(cfg.model.name, **model_options(cfg, info.num_classes, info.in_chans)).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, info.in_chans, info.image_size, info.image_size, generator=g)
    y = torch.randint(0, info.num_classes, (batch,), generator=g)

    def step():
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def run(config: str, threads: int, rounds: int, steps: int) -> pd.DataFrame:
    torch.set_num_threads(threads)
    cfg = load_config(config)
    batch = cfg.data.batch_size
    fns = {c: _step_fn(load_config(config), *c, batch) for c in CONFIGS}
    per_round = {c: (lambda fn=fn: [fn() for _ in range(steps)]) for c, fn in fns.items()}
    seconds = {c: t / steps for c, t in time_group(per_round, repeats=rounds, warmup=1).items()}
    info = machine_info()
    fp = seconds[("fp", "fp")]
    rows = []
    for (xq, wq), t in seconds.items():
        rows.append({"model": cfg.model.name, "x_quant": xq, "w_quant": wq, "batch": batch,
                     "ms_per_step": round(1e3 * t, 3), "images_per_s": round(batch / t, 1),
                     "relative_to_fp": round(fp / t, 3), "threads": threads, "cpu": info["cpu"],
                     "torch": info["torch"]})
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lsqbq bench training", description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="config/train/fmnist_resnet.yaml", help="training recipe whose model is timed")
    parser.add_argument("--out", default="results/bench", help="output directory")
    parser.add_argument("--threads", type=int_at_least(1), default=1, help="torch threads")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds per configuration")
    parser.add_argument("--steps", type=int, default=5, help="optimiser steps per timing")
    parser.add_argument("--quick", action="store_true", help="1 round of 1 step (a check, not a measurement)")
    args = parser.parse_args(argv)
    rounds, steps = (1, 1) if args.quick else (args.rounds, args.steps)
    df = run(args.config, args.threads, rounds, steps)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    df.to_csv(out / "training.csv", index=False)
    print(df.to_string(index=False))
    from .. import tracking

    tracking.record_run(
        "bench", "bench_training", strict=False,
        params={"config": args.config, "threads": args.threads, "rounds": rounds, "steps": steps,
                "quick": args.quick, "model": df["model"].iloc[0], "batch": int(df["batch"].iloc[0]),
                "cpu": df["cpu"].iloc[0], "torch": df["torch"].iloc[0]},
        metrics={f"{k} {r.x_quant}_{r.w_quant}": getattr(r, k) for r in df.itertuples()
                 for k in ("images_per_s", "relative_to_fp")},
        artifacts=[out / "training.csv"],
        tags={"lsqbq.kind": "bench training", "quick": args.quick})
    return 0
