"""Training throughput per scheme: ``lsqbq bench training [--config FILE] [--out results/bench] [--threads N]``.

Times one optimiser step (forward, backward, Adam update) of the default profile's model on a batch of
the profile's shape, for the fp/fp teacher and for every activation scheme with 1-bit ``ls-1`` weights.
The candidates are timed round-robin (``--rounds`` rounds, median per scheme) so that a slow spell of a
shared machine hits all of them alike. Writes ``training.csv`` (images/s and the ratio to fp/fp; machine, commit,
ISA path and load on every row) and ``training.md`` to ``--out``. KD's teacher forward is not included: it costs
the same for every student. One MLflow run of experiment ``lsqbq-bench-training`` records them
(:mod:`lsqbq.bench.harness`). ``--smoke``: batch 2, one round of one step.
"""
from __future__ import annotations


import pandas as pd
import torch
import torch.nn.functional as F

from ..config import load_config
from ..data import dataset_info
from ..models import build
from ..config import model_options
from .harness import BenchRun, parser, provenance_line
from .timing import time_group

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


def run(config: str, rounds: int, steps: int, batch: int | None = None) -> list[dict]:
    """One row per configuration of :data:`CONFIGS`: ms per step, images/s and the speed relative to fp/fp, at
    the recipe's batch size (or ``batch``) with torch's current thread count."""
    cfg = load_config(config)
    batch = batch or cfg.data.batch_size
    fns = {c: _step_fn(load_config(config), *c, batch) for c in CONFIGS}
    per_round = {c: (lambda fn=fn: [fn() for _ in range(steps)]) for c, fn in fns.items()}
    seconds = {c: t / steps for c, t in time_group(per_round, repeats=rounds, warmup=1).items()}
    fp = seconds[("fp", "fp")]
    return [{"model": cfg.model.name, "x_quant": xq, "w_quant": wq, "batch": batch,
             "ms_per_step": round(1e3 * t, 3), "images_per_s": round(batch / t, 1),
             "relative_to_fp": round(fp / t, 3), "threads": torch.get_num_threads()}
            for (xq, wq), t in seconds.items()]


def to_markdown(df: pd.DataFrame) -> str:
    """The table of ``training.csv`` with the machine and provenance line."""
    r = df.iloc[0]
    cols = ["x_quant", "w_quant", "ms_per_step", "images_per_s", "relative_to_fp"]
    return (f"# Training throughput\n\n{r['model']}, batch {r['batch']}, {r['threads']} torch thread(s) on {r['cpu']}, "
            f"torch {r['torch']}; median over rounds, all schemes timed round-robin.\n\n"
            + df[cols].to_markdown(index=False) + "\n\n" + provenance_line(df) + "\n")


def main(argv: list[str] | None = None) -> int:
    p = parser("training", __doc__, threads="one", threads_default=1, repeats=None,
               quick="1 round of 1 step (a check, not a measurement)")
    p.add_argument("--config", default="config/train/fmnist_resnet.yaml", help="training recipe whose model is timed")
    p.add_argument("--rounds", type=int, default=5, help="timed rounds per configuration")
    p.add_argument("--steps", type=int, default=5, help="optimiser steps per timing")
    args = p.parse_args(argv)
    rounds, steps = (1, 1) if args.quick or args.smoke else (args.rounds, args.steps)
    with BenchRun("training", args.out, threads=args.threads, options=vars(args)) as bench:
        df = bench.table(run(args.config, rounds, steps, batch=2 if args.smoke else None))
        bench.write_csv("training.csv", df)
        bench.write_text("training.md", to_markdown(df))
        bench.record({f"{k} {r.x_quant}_{r.w_quant}": getattr(r, k) for r in df.itertuples()
                      for k in ("images_per_s", "relative_to_fp")},
                     params={"rounds": rounds, "steps": steps, "model": df["model"].iloc[0],
                             "batch": int(df["batch"].iloc[0])})
    print(df.to_string(index=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
