"""Train (or resume, or evaluate) one model from a YAML config; every run is an MLflow run.

Usage::

    lsqbq train --config config/smoke.yaml                          # < 1 min on a CPU
    lsqbq train --config config/train/fmnist_resnet.yaml \\
        --set model.x_quant=ls-2 --set model.w_quant=ls-1 \\
        --set kd.teacher=checkpoints/teacher/checkpoint.pt --out checkpoints/ls-2_ls-1/s0
    lsqbq train --config FILE --out DIR --resume                    # continue after a kill
    lsqbq train --config FILE --out DIR --eval-only                 # evaluate DIR/checkpoint.pt
    torchrun --nproc_per_node 2 -m lsqbq.train --config FILE        # DDP (gloo on CPU, NCCL on GPU)

Writes ``DIR/resume.pt`` after every epoch (the working checkpoint: weights, scales, moving averages, optimiser,
schedule and RNG state, what ``--resume`` needs), ``DIR/checkpoint.pt`` after the last one (the published
checkpoint: the same without optimiser, schedule and RNG state, about a third of the size), ``DIR/metrics.json``
and ``DIR/config.yaml``; every file atomically. Until the first ``resume.pt``, ``DIR/run.json`` names the MLflow
run, so ``--resume`` continues the same run even after a ``kill -9`` in the first epoch.
The loss is :func:`lsqbq.losses.training_loss` (cross-entropy, or distillation from ``kd.teacher``), the learning
rate :class:`lsqbq.schedules.LRSchedule`, evaluation :func:`lsqbq.evaluate.evaluate`. The teacher is frozen
(no gradients, never updated by the optimiser). By default it stays in *train* mode like the official code:
its BN layers normalise with the statistics of the current batch (their running averages are updated but never
used); ``kd.teacher_mode: eval`` uses the stored statistics.

Every check that can fail early (config, device, model name, output path, checkpoints, teacher, tracking store)
runs before the data is loaded and before the MLflow run is created; any failure after that ends the run
FAILED with the error (KILLED on an interrupt). A non-finite loss stops training with :class:`TrainingError`.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import checkpoint as ckpt_io
from . import distributed as D
from .checkpoint import build_model
from .config import Config, config_hash, dump_yaml, flatten, load_config, model_options, to_dict
from .errors import ConfigError, InputError, TrainingError
from .evaluate import evaluate
from .losses import training_loss
from .preflight import Plan, build_teacher, preflight, trainable_batches
from .progress import Progress
from .schedules import LRSchedule

__all__ = ["main", "run", "build_optimizer", "Terminated"]


def build_optimizer(cfg: Config, params) -> torch.optim.Optimizer:
    """Adam, or SGD with momentum (Nesterov when ``optim.nesterov`` and momentum > 0), from ``cfg.optim``."""
    o = cfg.optim
    if o.name == "sgd":
        return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, nesterov=o.nesterov and o.momentum > 0,
                               weight_decay=o.weight_decay)
    return torch.optim.Adam(params, lr=o.lr, weight_decay=o.weight_decay)


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def _plain_state(model: nn.Module) -> dict:
    """State dict of the model with SyncBatchNorm2d keys (identical to BatchNorm2d keys)."""
    return {k: v.detach().cpu() for k, v in _unwrap(model).state_dict().items()}


def _wants_cuda(cfg: Config) -> bool:
    return cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())


def _select_device(cfg: Config, dist_info: D.DistInfo) -> torch.device:
    if _wants_cuda(cfg):
        return torch.device("cuda", dist_info.local_rank)
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


# -------------------------------------------------------------------------------------------- epoch

_DIVERGED_HINT = "lower optim.lr (now {lr:g}), set model.clamp, or check the data"


@contextmanager
def _diverged(cfg: Config, where: str):
    """Report non-finite activations or weights met by a quantizer (InputError), or an update that overflows
    float32, as a diverged training."""
    try:
        yield
    except (InputError, RuntimeError) as e:
        if isinstance(e, RuntimeError) and "overflow" not in str(e):
            raise
        why = " ".join(str(e).split())
        raise TrainingError(f"training diverged at {where}: {why}; {_DIVERGED_HINT.format(lr=cfg.optim.lr)}") from e


def _train_epoch(model, teacher, loader, optimizer, schedule: LRSchedule, cfg: Config, device, epoch: int,
                 progress: Progress):
    """One pass over ``loader``; returns (mean train loss, train top-1 %, images/s, last lr) over all ranks.

    Raises TrainingError when the loss is not finite or no batch could be trained.
    """
    model.train()
    if teacher is not None:
        teacher.train(cfg.kd.teacher_mode == "train")
    amp = cfg.amp and device.type == "cuda"
    ctx = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if amp else nullcontext
    sums = torch.zeros(3, dtype=torch.float64)  # loss * n, correct, n
    t0, seen, steps = time.perf_counter(), 0, 0
    lr = schedule.lr_at(schedule.t)
    for i, (x, y) in enumerate(progress.wrap(loader, epoch)):
        if len(y) < 2:  # a one-sample tail batch cannot be batch-normalised
            continue
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        lr = optimizer.param_groups[0]["lr"]
        with ctx(), _diverged(cfg, f"epoch {epoch + 1}, batch {i + 1} (step {schedule.t})"):
            out = model(x)
            t_out = None
            if teacher is not None:
                with torch.no_grad():
                    t_out = teacher(x)
            loss = training_loss(out, y, t_out, cfg.kd)
        value = loss.item()
        if not math.isfinite(value):
            raise TrainingError(f"the training loss became {value} at epoch {epoch + 1}, batch {i + 1} "
                                f"(step {schedule.t}); {_DIVERGED_HINT.format(lr=cfg.optim.lr)}")
        optimizer.zero_grad(set_to_none=True)
        with _diverged(cfg, f"epoch {epoch + 1}, batch {i + 1} (step {schedule.t})"):
            loss.backward()
            optimizer.step()
        schedule.step()
        steps += 1
        n = len(y)
        correct = int((out.argmax(1) == y).sum())
        sums += torch.tensor([value * n, correct, n], dtype=torch.float64)
        seen += n
        progress.batch(i, sums[0].item(), sums[1].item(), int(sums[2].item()), lr)
    if steps == 0:
        raise TrainingError(f"epoch {epoch + 1}: no optimiser step: every batch had fewer than 2 samples "
                            f"(data.batch_size={cfg.data.batch_size}, {len(loader.sampler)} training images in this "
                            "process); use more training images and data.batch_size >= 2")
    elapsed = time.perf_counter() - t0
    D.all_reduce_sum(sums)
    n = max(sums[2].item(), 1.0)
    return sums[0].item() / n, 100.0 * sums[1].item() / n, sums[2].item() / max(elapsed, 1e-9), lr


# ---------------------------------------------------------------------------------------------- run


def run(cfg: Config, resume: bool = False, eval_only: bool = False) -> dict[str, Any]:
    """Train ``cfg`` (or resume / evaluate); returns the final metrics dict (also written to metrics.json)."""
    dist_info = D.init(_wants_cuda(cfg) and torch.cuda.is_available())
    try:
        return _run(cfg, resume, eval_only, dist_info)
    finally:
        D.shutdown()


def _run(cfg: Config, resume: bool, eval_only: bool, dist_info: D.DistInfo) -> dict[str, Any]:
    from .data import build_loaders, set_epoch

    plan = preflight(cfg, resume, eval_only, dist_info)
    device = _select_device(cfg, dist_info)
    threads = _set_threads(cfg)
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    _seed_all(cfg.seed)

    train_loader, test_loader = build_loaders(cfg, dist_info.rank, dist_info.world)
    info, data_hash = train_loader.info, train_loader.data_hash
    if not eval_only and trainable_batches(train_loader) == 0:
        raise TrainingError(f"data: {len(train_loader.sampler)} training image(s) per process cannot fill a batch of "
                            "2 (batch normalisation needs two samples); use more images (data.train_subset) or "
                            "a larger data.batch_size")
    options = model_options(cfg, info.num_classes, info.in_chans)
    model = build_model(cfg.model.name, options).to(device)
    if dist_info.enabled and cfg.sync_bn:
        D.convert_sync_bn(model)  # before the optimiser is built: the new BN modules own new parameters
    optimizer = build_optimizer(cfg, model.parameters())
    schedule = LRSchedule(optimizer, cfg, max(len(train_loader), 1))
    start_epoch, history, run_id, train_time = 0, [], None, 0.0

    state = plan.state
    if state is not None:
        ckpt_io.load_weights(_unwrap(model), state["model"], plan.state_path)
        if not eval_only:
            if "optimizer" in state:  # a working checkpoint; a published one is finished (preflight checks)
                optimizer.load_state_dict(state["optimizer"])
                schedule.load_state_dict(state["schedule"])
            start_epoch, history = int(state["epoch"]), list(state.get("history", []))
            run_id, train_time = state.get("run_id"), float(state.get("train_time_s", 0.0))

    teacher, teacher_run_id = build_teacher(plan, info.num_classes, info.in_chans, device)
    if dist_info.enabled:
        if cfg.sync_bn and teacher is not None and cfg.kd.teacher_mode == "train":
            D.convert_sync_bn(teacher)
        model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if state is not None and not eval_only and "rng" in state:
        ckpt_io.set_rng_state(state["rng"])

    progress = Progress(cfg.progress, cfg.epochs, max(len(train_loader), 1), start_epoch, cfg.progress_every,
                        enabled=dist_info.is_main)
    if resume and not eval_only:
        if state is None:
            progress.say(f"--resume: no checkpoint at {plan.resume_path}; training from the start")
        elif start_epoch >= cfg.epochs:
            progress.say(f"resuming {plan.state_path}: all {cfg.epochs} epochs done; evaluating only")
        else:
            progress.say(f"resuming from epoch {start_epoch} of {cfg.epochs} ({plan.state_path}, MLflow run {run_id})")

    from . import tracking

    tags = tracking.provenance_tags(cfg, data_hash, device, threads, dist_info.world, teacher_run_id)
    if eval_only:
        tags.update({"mode": "eval-only", "source_run_id": state.get("run_id") or "unknown"})
    tracker: tracking.Run = tracking.NullRun()
    if cfg.tracking.enabled and dist_info.is_main:
        if run_id is None and not eval_only:  # killed before its first checkpoint: OUT/run.json names the run
            run_id, note = tracking.interrupted_run(plan.out_dir, cfg.tracking.uri, resume)
            if note:
                progress.say(note)
        experiment = cfg.tracking.experiment or f"lsqbq-{cfg.data.name}"
        tracker = tracking.start_run(experiment, tracking.run_name(cfg), uri=cfg.tracking.uri, tags=tags,
                                     run_id=run_id if not eval_only else None)
    metrics_path = plan.out_dir / ("metrics.json" if not eval_only else "eval_metrics.json")
    written: list[Path] = []
    try:
        if dist_info.is_main:
            plan.out_dir.mkdir(parents=True, exist_ok=True)
            if tracker.run_id is not None and state is None:  # no checkpoint names the run yet; a kill -9 may come
                written.append(tracking.write_run_file(plan.out_dir, tracker.run_id, cfg.tracking.uri))
            tracker.log_params(flatten(cfg))
            if not (plan.out_dir / "config.yaml").exists():
                written.append(plan.out_dir / "config.yaml")
            dump_yaml(cfg, plan.out_dir / "config.yaml")
        for epoch in range(start_epoch, cfg.epochs if not eval_only else 0):
            set_epoch(train_loader, epoch)
            t0 = time.perf_counter()
            train_loss, train_top1, ips, lr = _train_epoch(model, teacher, train_loader, optimizer, schedule, cfg,
                                                           device, epoch, progress)
            train_time += time.perf_counter() - t0
            with _diverged(cfg, f"the evaluation after epoch {epoch + 1}"):
                val = evaluate(model, test_loader, device, cfg.amp)
            row = {"epoch": epoch + 1, "train_loss": train_loss, "train_top1": train_top1, "val_loss": val["loss"],
                   "top1": val["top1"], "top5": val["top5"], "lr": lr, "images_per_s": ips}
            history.append(row)
            tracker.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=epoch + 1)
            progress.end_epoch(row)
            if dist_info.is_main:
                published = {
                    "format": ckpt_io.FORMAT, "config": to_dict(cfg), "model_options": options,
                    "epoch": epoch + 1, "model": _plain_state(model), "history": history,
                    "run_id": tracker.run_id, "data_hash": data_hash, "train_time_s": train_time,
                }
                ckpt_io.save_atomic({**published, "optimizer": optimizer.state_dict(),
                                     "schedule": schedule.state_dict(), "rng": ckpt_io.rng_state()},
                                    plan.resume_path)
                (plan.out_dir / tracking.RUN_FILE).unlink(missing_ok=True)  # resume.pt names the run from now on
                if epoch + 1 == cfg.epochs:
                    ckpt_io.save_atomic(published, plan.ckpt_path, compact=True)
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
            written.append(metrics_path)
            ckpt_io.write_text_atomic(metrics_path, json.dumps(final, indent=2) + "\n")
            tracker.log_artifact(plan.out_dir / "config.yaml")
            tracker.log_artifact(metrics_path)
            if cfg.tracking.log_checkpoint and not eval_only and plan.ckpt_path.is_file():
                tracker.log_artifact(plan.ckpt_path)
        tracker.end("FINISHED")
        return final
    except BaseException as e:
        tracker.fail(e)
        if dist_info.is_main:
            _remove_partial_outputs(plan, written)
        raise


def _remove_partial_outputs(plan: Plan, written: list[Path]) -> None:
    """After a failure: drop the metrics file of this invocation, and the config.yaml (and the directory, when
    this invocation created it) if no checkpoint was saved. A saved checkpoint stays: it is what --resume needs."""
    for path in written:
        if path.name.endswith("metrics.json") or not (plan.ckpt_path.exists() or plan.resume_path.exists()):
            path.unlink(missing_ok=True)
    if plan.created_out_dir and plan.out_dir.is_dir() and not any(plan.out_dir.iterdir()):
        plan.out_dir.rmdir()


# --------------------------------------------------------------------------------------------- main


class Terminated(SystemExit):
    """SIGTERM (a scheduler or torchrun stopping the job) as an exception: the MLflow run ends KILLED, a checkpoint
    save in progress removes its temporary file, and the process exits with 128 + 15."""

    def __str__(self) -> str:
        return "terminated by SIGTERM"


def _terminate(signum, frame):  # noqa: ARG001
    raise Terminated(128 + signum)


def main(argv: list[str] | None = None) -> int:
    """``lsqbq train``: errors of the :class:`~lsqbq.errors.LsqbqError` family propagate to the CLI wrapper."""
    parser = argparse.ArgumentParser(prog="lsqbq train", description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=None, help="YAML config (keys: config/README.md)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. --set model.x_quant=ls-2 (repeatable)")
    parser.add_argument("--out", default=None, help="output directory (overrides output.dir)")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt if present")
    parser.add_argument("--eval-only", action="store_true", help="evaluate OUT/checkpoint.pt, no training")
    args = parser.parse_args(argv)
    if args.resume and args.eval_only:
        raise ConfigError("--resume and --eval-only exclude each other; pass one of them")
    overrides = list(args.overrides) + ([f"output.dir={json.dumps(args.out)}"] if args.out else [])
    cfg = load_config(args.config, overrides)
    previous = signal.getsignal(signal.SIGTERM)
    try:  # a scheduler's SIGTERM ends the MLflow run KILLED instead of leaving it RUNNING
        signal.signal(signal.SIGTERM, _terminate)
    except ValueError:  # not the main thread
        previous = None
    try:
        run(cfg, resume=args.resume, eval_only=args.eval_only)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return 0


if __name__ == "__main__":
    from .cli import run_command

    sys.exit(run_command("train", main))
