"""Train (or resume, or evaluate) one model from a YAML config; every run is an MLflow run.

Usage::

    lsqbq train --config config/smoke.yaml                          # < 1 min on a CPU
    lsqbq train --config config/train/fmnist_resnet.yaml \\
        --set model.x_quant=ls-2 --set model.w_quant=ls-1 \\
        --set kd.teacher=checkpoints/teacher/checkpoint.pt --out checkpoints/ls-2_ls-1/s0
    lsqbq train --config FILE --out DIR --resume                    # continue after a kill
    lsqbq train --config FILE --out DIR --eval-only                 # evaluate DIR/checkpoint.pt
    torchrun --nproc_per_node 2 -m lsqbq.train --config FILE        # DDP (gloo on CPU, NCCL on GPU)

Writes ``DIR/checkpoint.pt`` (atomically, after every epoch), ``DIR/metrics.json`` and ``DIR/config.yaml``.

Loss: cross-entropy, or with ``kd.teacher`` knowledge distillation per sample
``T^2 * KL(softmax(t/T) || softmax(s/T))``, mixed as ``(1 - ce_weight) * KD + ce_weight * CE``; with
``kd.teacher_correction`` the KD term is replaced by CE on the samples whose teacher prediction is wrong.
The teacher is frozen (no gradients, never updated by the optimiser). By default it stays in *train*
mode like the official code: its BN layers normalise with the statistics of the current batch (their
running averages are updated but never used); ``kd.teacher_mode: eval`` uses the stored statistics.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import checkpoint as ckpt_io
from . import distributed as D
from .config import Config, ConfigError, config_hash, dump_yaml, flatten, from_dict, load_config, to_dict

__all__ = ["main", "run", "build_model", "model_options", "load_checkpoint", "evaluate", "kd_loss", "LRSchedule",
           "accuracy_counts"]


# --------------------------------------------------------------------------------------------- model


def model_options(cfg: Config, num_classes: int, in_chans: int) -> dict[str, Any]:
    """Builder options for ``lsqbq.models.build`` from ``cfg.model`` and the dataset (None = builder default)."""
    m = cfg.model
    opts: dict[str, Any] = dict(num_classes=num_classes, in_chans=in_chans, x_quant=m.x_quant, w_quant=m.w_quant,
                                clamp=m.clamp, act_stats=m.act_stats)
    if not m.name.startswith("lenet"):
        stem = m.stem or ("imagenet" if cfg.data.name == "imagefolder" else "cifar")
        # the block is resolved here (not left to the builder) so that a checkpoint's options rebuild the same
        # architecture when another scheme is swapped in later (lsqbq evaluate --w-quant ...)
        block = m.block or ("regular" if m.x_quant == "fp" and m.w_quant == "fp" else "xnor")
        opts.update(stem=stem, stem_stride=m.stem_stride, block=block, width=m.width, layers=m.layers, nonlinearity=m.nonlinearity,
                    double_shortcut=m.double_shortcut)
    return {k: v for k, v in opts.items() if v is not None}


def build_model(name: str, options: dict[str, Any]) -> nn.Module:
    from .models import build

    return build(name, **options)


# ---------------------------------------------------------------------------------------- schedule


class LRSchedule:
    """Learning rate as a function of the global batch step ``t`` (0-based), applied before each step.

    With E epochs of S steps, e = t // S, N = E * S and lr0 = ``optim.lr``:
        constant:  lr0
        step:      lr0 * gamma ** (e // step_size)
        multistep: lr0 * gamma ** #{m in milestones : m <= e}
        linear:    lr0 - (lr0 - min_lr) * t / N                      (per batch)
        cosine:    min_lr + (lr0 - min_lr) * (1 + cos(pi * t / N)) / 2  (per batch)
    State: ``{"step": t}`` (resumable).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, cfg: Config, steps_per_epoch: int):
        self.opt, self.s, self.lr0 = optimizer, cfg.schedule, cfg.optim.lr
        self.steps_per_epoch, self.total = steps_per_epoch, steps_per_epoch * cfg.epochs
        self.t = 0

    def lr_at(self, t: int) -> float:
        s, e = self.s, t // self.steps_per_epoch
        if s.name == "constant":
            return self.lr0
        if s.name == "step":
            return self.lr0 * s.gamma ** (e // s.step_size)
        if s.name == "multistep":
            return self.lr0 * s.gamma ** sum(1 for m in s.milestones if m <= e)
        frac = min(t / max(self.total, 1), 1.0)
        if s.name == "linear":
            return self.lr0 - (self.lr0 - s.min_lr) * frac
        if s.name == "cosine":
            return s.min_lr + (self.lr0 - s.min_lr) * 0.5 * (1 + math.cos(math.pi * frac))
        raise ValueError(f"unknown schedule {s.name!r}")

    def apply(self) -> float:
        lr = self.lr_at(self.t)
        for g in self.opt.param_groups:
            g["lr"] = lr
        return lr

    def step(self) -> None:
        self.t += 1

    def state_dict(self) -> dict:
        return {"step": self.t}

    def load_state_dict(self, state: dict) -> None:
        self.t = int(state["step"])


def build_optimizer(cfg: Config, params) -> torch.optim.Optimizer:
    o = cfg.optim
    if o.name == "sgd":
        return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, nesterov=o.nesterov and o.momentum > 0,
                               weight_decay=o.weight_decay)
    return torch.optim.Adam(params, lr=o.lr, weight_decay=o.weight_decay)


# -------------------------------------------------------------------------------------------- losses


def kd_loss(student: Tensor, teacher: Tensor, target: Tensor, temperature: float = 1.0, ce_weight: float = 0.0,
            teacher_correction: bool = False) -> Tensor:
    """Distillation loss, mean over the batch.

    Math (per sample, T = temperature, p = softmax):
        KD = T^2 * sum_c p(t/T)_c * (log p(t/T)_c - log p(s/T)_c)
        CE = -log p(s)_y
        term = CE if (teacher_correction and argmax t != y) else KD
        loss = (1 - ce_weight) * term + ce_weight * CE
    Shapes: ``student, teacher: (B, C)``, ``target: (B,)`` -> scalar.
    """
    T = temperature
    log_ps = F.log_softmax(student / T, dim=1)
    log_pt = F.log_softmax(teacher / T, dim=1)
    kd = (log_pt.exp() * (log_pt - log_ps)).sum(1) * (T * T)   # (B,)
    ce = F.cross_entropy(student, target, reduction="none")     # (B,)
    if teacher_correction:
        kd = torch.where(teacher.argmax(1) != target, ce, kd)
    return ((1 - ce_weight) * kd + ce_weight * ce).mean()


def accuracy_counts(logits: Tensor, target: Tensor, ks=(1, 5)) -> list[int]:
    """Number of samples whose target is among the top-k logits, for each k (k capped at #classes)."""
    maxk = min(max(ks), logits.shape[1])
    top = logits.topk(maxk, dim=1).indices                      # (B, maxk)
    hit = top == target[:, None]
    return [int(hit[:, :min(k, maxk)].any(1).sum()) for k in ks]


# ----------------------------------------------------------------------------------------- evaluate


@torch.no_grad()
def evaluate(model: nn.Module, loader, device: torch.device | str = "cpu", amp: bool = False) -> dict[str, float]:
    """Cross-entropy loss, top-1 and top-5 accuracy (%) of ``model`` on ``loader`` (summed over DDP ranks)."""
    device = torch.device(device)
    was_training = model.training
    model.eval()
    sums = torch.zeros(4, dtype=torch.float64)  # loss sum, top1, top5, n
    ctx = torch.autocast("cuda", dtype=torch.bfloat16) if (amp and device.type == "cuda") else nullcontext()
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with ctx:
            out = model(x)
        out = out.float()
        t1, t5 = accuracy_counts(out, y)
        sums += torch.tensor([F.cross_entropy(out, y, reduction="sum").item(), t1, t5, len(y)], dtype=torch.float64)
    model.train(was_training)
    D.all_reduce_sum(sums)
    n = max(sums[3].item(), 1.0)
    return {"loss": sums[0].item() / n, "top1": 100.0 * sums[1].item() / n, "top5": 100.0 * sums[2].item() / n,
            "n": int(sums[3].item())}


# --------------------------------------------------------------------------------------- checkpoints


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[nn.Module, Config]:
    """Rebuild the model stored in ``path`` (weights_only load) -> (model in eval mode, its Config)."""
    state = ckpt_io.load(path, map_location)
    cfg = from_dict(state["config"])
    model = build_model(cfg.model.name, dict(state["model_options"]))
    model.load_state_dict(state["model"])
    return model.eval(), cfg


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def _plain_state(model: nn.Module) -> dict:
    """State dict of the model with SyncBatchNorm2d keys (identical to BatchNorm2d keys)."""
    return {k: v.detach().cpu() for k, v in _unwrap(model).state_dict().items()}


# -------------------------------------------------------------------------------------------- device


def _select_device(cfg: Config, dist_info: D.DistInfo | None = None) -> torch.device:
    if cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("device: cuda requested but no CUDA device is available")
        return torch.device("cuda", dist_info.local_rank if dist_info else 0)
    return torch.device("cpu")


def _set_threads(cfg: Config) -> int:
    n = cfg.threads or int(os.environ.get("LSQBQ_THREADS", "0") or 0)
    if n:
        torch.set_num_threads(n)
    return torch.get_num_threads()


def _seed_all(seed: int) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _progress(cfg: Config, dist_info: D.DistInfo) -> bool:
    if not dist_info.is_main or cfg.progress == "off":
        return False
    return cfg.progress == "on" or sys.stderr.isatty()


# ----------------------------------------------------------------------------------------------- run


def _teacher(cfg: Config, device: torch.device) -> tuple[nn.Module | None, str | None]:
    if cfg.kd.teacher is None:
        return None, None
    path = Path(cfg.kd.teacher)
    state = ckpt_io.load(path, "cpu")
    tcfg = from_dict(state["config"])
    teacher = build_model(tcfg.model.name, dict(state["model_options"]))
    teacher.load_state_dict(state["model"])
    for p in teacher.parameters():
        p.requires_grad_(False)
    teacher.to(device).train(cfg.kd.teacher_mode == "train")
    return teacher, state.get("run_id")


def _train_epoch(model, teacher, loader, optimizer, schedule, cfg: Config, device, dist_info, epoch: int):
    """One pass over ``loader``; returns (mean train loss, train top-1 %, images/s, last lr) over all ranks."""
    from tqdm import tqdm

    model.train()
    if teacher is not None:
        teacher.train(cfg.kd.teacher_mode == "train")
    amp = cfg.amp and device.type == "cuda"
    ctx = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if amp else nullcontext
    sums = torch.zeros(3, dtype=torch.float64)  # loss * n, correct, n
    bar = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not _progress(cfg, dist_info),
               leave=False, dynamic_ncols=True)
    t0, seen, lr = time.perf_counter(), 0, schedule.lr_at(schedule.t)
    for x, y in bar:
        if len(y) < 2:  # a one-sample tail batch cannot be batch-normalised
            continue
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        lr = schedule.apply()
        with ctx():
            out = model(x)
            if teacher is not None:
                with torch.no_grad():
                    t_out = teacher(x)
                loss = kd_loss(out.float(), t_out.float(), y, cfg.kd.temperature, cfg.kd.ce_weight,
                               cfg.kd.teacher_correction)
            else:
                loss = F.cross_entropy(out.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        n = len(y)
        correct = int((out.argmax(1) == y).sum())
        sums += torch.tensor([loss.item() * n, correct, n], dtype=torch.float64)
        seen += n
        if bar.disable is False:
            bar.set_postfix(loss=f"{sums[0] / sums[2]:.3f}", acc=f"{100 * sums[1] / sums[2]:.1f}",
                            img_s=f"{seen / (time.perf_counter() - t0):.0f}", lr=f"{lr:.2e}")
    elapsed = time.perf_counter() - t0
    D.all_reduce_sum(sums)
    n = max(sums[2].item(), 1.0)
    return sums[0].item() / n, 100.0 * sums[1].item() / n, sums[2].item() / max(elapsed, 1e-9), lr


def _run_name(cfg: Config) -> str:
    if cfg.tracking.run_name:
        return cfg.tracking.run_name
    return f"{cfg.model.name}-a{cfg.model.x_quant}-w{cfg.model.w_quant}-s{cfg.seed}"


def _start_tracking(cfg: Config, dist_info, tags: dict, run_id: str | None):
    from . import tracking

    if not (cfg.tracking.enabled and dist_info.is_main):
        return tracking.NullRun()
    experiment = cfg.tracking.experiment or f"lsqbq-{cfg.data.name}"
    run = tracking.start_run(experiment, _run_name(cfg), uri=cfg.tracking.uri, tags=tags, run_id=run_id)
    return run


def _provenance_tags(cfg: Config, data_hash: str, device: torch.device, teacher_run_id: str | None,
                     threads: int, world: int) -> dict[str, str]:
    import lsqbq

    from . import tracking

    tags = {**tracking.git_info(), "data_hash": data_hash, "lsqbq_version": lsqbq.__version__,
            "torch_version": torch.__version__, **tracking.versions(),
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({threads} threads)",
            "world_size": str(world), "config_hash": config_hash(cfg), "dataset": cfg.data.name,
            "model": cfg.model.name, "x_quant": cfg.model.x_quant, "w_quant": cfg.model.w_quant,
            "seed": str(cfg.seed)}
    if cfg.kd.teacher:
        tags["teacher_run_id"] = teacher_run_id or "unknown"
        tags["teacher_checkpoint"] = cfg.kd.teacher
    tags.update(cfg.tracking.tags)
    return tags


def run(cfg: Config, resume: bool = False, eval_only: bool = False) -> dict[str, Any]:
    """Train ``cfg`` (or resume / evaluate); returns the final metrics dict (also written to metrics.json)."""
    from .data import build_loaders, set_epoch

    use_cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    dist_info = D.init(use_cuda)
    device = _select_device(cfg, dist_info)
    threads = _set_threads(cfg)
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    _seed_all(cfg.seed)
    out_dir = Path(cfg.output.dir)
    ckpt_path = out_dir / "checkpoint.pt"

    train_loader, test_loader = build_loaders(cfg, dist_info.rank, dist_info.world)
    info, data_hash = train_loader.info, train_loader.data_hash
    options = model_options(cfg, info.num_classes, info.in_chans)
    model = build_model(cfg.model.name, options).to(device)
    if dist_info.enabled and cfg.sync_bn:
        D.convert_sync_bn(model)  # before the optimiser is built: the new BN modules own new parameters
    optimizer = build_optimizer(cfg, model.parameters())
    schedule = LRSchedule(optimizer, cfg, max(len(train_loader), 1))
    start_epoch, history, run_id, train_time = 0, [], None, 0.0

    state = None
    if resume or eval_only:
        if ckpt_path.is_file():
            state = ckpt_io.load(ckpt_path, "cpu")
        elif eval_only:
            raise FileNotFoundError(f"--eval-only: no checkpoint at {ckpt_path}")
    if state is not None:
        saved = from_dict(state["config"])
        if config_hash(saved) != config_hash(cfg) and not eval_only:
            raise ConfigError(f"--resume: {ckpt_path} was written by a different config "
                              f"(hash {config_hash(saved)} != {config_hash(cfg)})")
        model.load_state_dict(state["model"])
        if not eval_only:
            optimizer.load_state_dict(state["optimizer"])
            schedule.load_state_dict(state["schedule"])
            ckpt_io.set_rng_state(state["rng"])
            start_epoch, history = int(state["epoch"]), list(state["history"])
            run_id, train_time = state.get("run_id"), float(state.get("train_time_s", 0.0))

    teacher, teacher_run_id = _teacher(cfg, device) if not eval_only else (None, None)
    if dist_info.enabled:
        if cfg.sync_bn and teacher is not None and cfg.kd.teacher_mode == "train":
            D.convert_sync_bn(teacher)
        model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    tags = _provenance_tags(cfg, data_hash, device, teacher_run_id, threads, dist_info.world)
    if eval_only:
        tags.update({"mode": "eval-only", "source_run_id": state.get("run_id") or "unknown"})
    tracker = _start_tracking(cfg, dist_info, tags, run_id if not eval_only else None)
    if dist_info.is_main:
        tracker.log_params(flatten(cfg))
        out_dir.mkdir(parents=True, exist_ok=True)
        dump_yaml(cfg, out_dir / "config.yaml")
    status = "FAILED"
    try:
        for epoch in range(start_epoch, cfg.epochs if not eval_only else 0):
            set_epoch(train_loader, epoch)
            t0 = time.perf_counter()
            train_loss, train_top1, ips, lr = _train_epoch(model, teacher, train_loader, optimizer, schedule, cfg,
                                                           device, dist_info, epoch)
            train_time += time.perf_counter() - t0
            val = evaluate(model, test_loader, device, cfg.amp)
            row = {"epoch": epoch + 1, "train_loss": train_loss, "train_top1": train_top1, "val_loss": val["loss"],
                   "top1": val["top1"], "top5": val["top5"], "lr": lr, "images_per_s": ips}
            history.append(row)
            tracker.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=epoch + 1)
            if dist_info.is_main:
                print(f"epoch {epoch + 1}/{cfg.epochs}: train_loss {train_loss:.4f} val_loss {val['loss']:.4f} "
                      f"top1 {val['top1']:.2f} top5 {val['top5']:.2f} lr {lr:.2e} {ips:.0f} img/s", flush=True)
                ckpt_io.save_atomic({
                    "format": ckpt_io.FORMAT, "config": to_dict(cfg), "model_options": options,
                    "epoch": epoch + 1, "model": _plain_state(model), "optimizer": optimizer.state_dict(),
                    "schedule": schedule.state_dict(), "rng": ckpt_io.rng_state(), "history": history,
                    "run_id": tracker.run_id, "data_hash": data_hash, "train_time_s": train_time,
                }, ckpt_path)
        if eval_only or start_epoch >= cfg.epochs:  # nothing trained in this invocation
            val = evaluate(model, test_loader, device, cfg.amp)
        final = {
            "top1": val["top1"], "top5": val["top5"], "loss": val["loss"], "epochs": cfg.epochs if not eval_only
            else int(state["epoch"]), "run_id": tracker.run_id, "data_hash": data_hash,
            "commit": tags["git_commit"], "git_dirty": tags["git_dirty"], "config_hash": config_hash(cfg),
            "dataset": cfg.data.name, "model": cfg.model.name, "x_quant": cfg.model.x_quant,
            "w_quant": cfg.model.w_quant, "seed": cfg.seed, "train_time_s": round(train_time, 2),
            "images_per_s": history[-1]["images_per_s"] if history else None, "n_test": val["n"],
            "teacher_run_id": teacher_run_id, "device": tags["device"],
        }
        if dist_info.is_main:
            tracker.log_metrics({"final_top1": final["top1"], "final_top5": final["top5"],
                                 "final_loss": final["loss"], "train_time_s": train_time},
                                step=len(history))
            metrics_name = "metrics.json" if not eval_only else "eval_metrics.json"
            (out_dir / metrics_name).write_text(json.dumps(final, indent=2) + "\n")
            tracker.log_artifact(out_dir / "config.yaml")
            tracker.log_artifact(out_dir / metrics_name)
            if cfg.tracking.log_checkpoint and not eval_only and ckpt_path.is_file():
                tracker.log_artifact(ckpt_path)
        status = "FINISHED"
        return final
    finally:
        tracker.end(status)
        D.shutdown()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lsqbq train", description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=None, help="YAML config (keys: lsqbq.config)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. --set model.x_quant=ls-2 (repeatable)")
    parser.add_argument("--out", default=None, help="output directory (overrides output.dir)")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt if present")
    parser.add_argument("--eval-only", action="store_true", help="evaluate OUT/checkpoint.pt, no training")
    args = parser.parse_args(argv)
    from .data import DataError

    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as e:
        print(f"lsqbq train: config error: {e}", file=sys.stderr)
        return 2
    if args.out:
        cfg.output.dir = args.out
    try:
        run(cfg, resume=args.resume, eval_only=args.eval_only)
    except DataError as e:
        print(f"lsqbq train: data error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
