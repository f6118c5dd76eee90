"""Checks before a training run: everything that can fail without the data is checked before the data loads
and before an MLflow run exists, so that a mistake costs seconds and leaves nothing behind.

:func:`preflight` checks the device, the model name, the output path, the checkpoint to resume or evaluate (and
that it was written by the same config), the teacher checkpoint and the tracking store (and that a resumed run
is in it), and removes temporary files a killed checkpoint save left behind. Errors name the key or file.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from . import checkpoint as ckpt_io
from . import distributed as D
from .checkpoint import load_model
from .config import Config, config_hash, from_dict
from .errors import CheckpointError, CheckpointNotFoundError, ConfigError

__all__ = ["Plan", "preflight", "stored_config", "trainable_batches", "build_teacher"]


class Plan:
    """What one invocation will do, established before any data is loaded or any MLflow run exists."""

    def __init__(self, cfg: Config, resume: bool, eval_only: bool):
        self.cfg, self.resume, self.eval_only = cfg, resume, eval_only
        self.out_dir = Path(cfg.output.dir)
        self.ckpt_path = self.out_dir / "checkpoint.pt"   # published: model, scales, averages, config (slim)
        self.resume_path = self.out_dir / "resume.pt"    # working: the above plus optimiser, schedule, RNG state
        self.state: dict | None = None          # checkpoint to continue from / evaluate
        self.state_path: Path = self.ckpt_path  # the file ``state`` came from
        self.teacher_state: dict | None = None
        self.created_out_dir = not self.out_dir.exists()


def preflight(cfg: Config, resume: bool, eval_only: bool, dist_info: D.DistInfo) -> Plan:
    """Fail fast, naming the key, file or store: device, model name, output path, checkpoints, teacher, tracking."""
    from .models import list_models

    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device: 'cuda' requested but torch finds no CUDA device; set device: cpu (or auto)")
    if cfg.model.name not in list_models():
        raise ConfigError(f"model.name: unknown model {cfg.model.name!r}; choose one of {', '.join(list_models())}")
    if dist_info.enabled and cfg.data.batch_size // dist_info.world < 2:
        raise ConfigError(f"data.batch_size: {cfg.data.batch_size} over {dist_info.world} processes leaves fewer "
                          "than 2 samples per process for batch normalisation; raise it")
    plan = Plan(cfg, resume, eval_only)
    if plan.out_dir.exists() and not plan.out_dir.is_dir():
        raise ConfigError(f"output.dir (--out): {plan.out_dir} exists and is not a directory; choose another --out")
    if eval_only or resume:
        # --resume continues from the working checkpoint; a finished run without one (published, slim) is only
        # evaluated. --eval-only reads the published checkpoint, or the working one of an unfinished run.
        working = plan.resume_path.is_file() and (resume and not eval_only or not plan.ckpt_path.is_file())
        plan.state_path = plan.resume_path if working else plan.ckpt_path
        if plan.state_path.is_file() or eval_only:
            try:
                plan.state = ckpt_io.load(plan.state_path, "cpu",
                                          require=ckpt_io.RESUME_KEYS if working and not eval_only
                                          else ckpt_io.MODEL_KEYS)
            except CheckpointNotFoundError:
                raise CheckpointNotFoundError(f"--eval-only: no checkpoint at {plan.ckpt_path}; train first, or pass "
                                              "the --out directory that holds checkpoint.pt") from None
        if (plan.state is not None and not eval_only and "optimizer" not in plan.state
                and int(plan.state.get("epoch", 0)) < cfg.epochs):
            raise CheckpointError(f"--resume: {plan.state_path} is a published checkpoint of {plan.state.get('epoch')} "
                                  f"epochs without optimiser state ({plan.resume_path.name} is missing), and epochs is "
                                  f"{cfg.epochs}; train to a new --out, or restore {plan.resume_path}")
    if plan.state is not None and not eval_only:
        saved = stored_config(plan.state, plan.state_path)
        if config_hash(saved) != config_hash(cfg):
            raise CheckpointError(f"--resume: {plan.state_path} was written by a different config (hash "
                                  f"{config_hash(saved)} != {config_hash(cfg)}); resume with the config it was "
                                  f"trained with ({plan.out_dir / 'config.yaml'}) or choose a new --out")
    if cfg.kd.teacher is not None and not eval_only:
        try:
            plan.teacher_state = ckpt_io.load(cfg.kd.teacher, "cpu", require=ckpt_io.MODEL_KEYS)
        except CheckpointNotFoundError:
            raise CheckpointNotFoundError(f"kd.teacher: checkpoint not found: {cfg.kd.teacher}; train the fp/fp "
                                          "teacher first or fix kd.teacher") from None
        except CheckpointError as e:
            raise CheckpointError(f"kd.teacher: {e}") from None
    if cfg.tracking.enabled and dist_info.is_main:
        from . import tracking

        tracking.init_store(cfg.tracking.uri)
        run_id = (plan.state or {}).get("run_id")
        if run_id and not eval_only:
            tracking.check_run(run_id, cfg.tracking.uri, plan.state_path)
    if dist_info.is_main:
        for name in ("checkpoint.pt", "resume.pt", "metrics.json", "eval_metrics.json"):
            ckpt_io.remove_stale_tmp(plan.out_dir / name)
    return plan


def stored_config(state: dict, path: Path) -> Config:
    try:
        return from_dict(state["config"])
    except ConfigError as e:
        raise CheckpointError(f"{path}: its stored config is not valid ({e}); retrain into a new --out") from None


def trainable_batches(loader) -> int:
    """Batches of an epoch with at least two samples (a one-sample batch cannot be batch-normalised)."""
    n, b = len(loader.sampler), loader.batch_size
    return n // b + (1 if n % b >= 2 else 0)


def build_teacher(plan: Plan, num_classes: int, in_chans: int, device: torch.device) -> tuple[nn.Module | None, str | None]:
    cfg = plan.cfg
    if plan.teacher_state is None:
        return None, None
    state = plan.teacher_state
    opts = state["model_options"]
    if (opts.get("num_classes"), opts.get("in_chans")) != (num_classes, in_chans):
        raise CheckpointError(f"kd.teacher: {cfg.kd.teacher} predicts {opts.get('num_classes')} classes from "
                              f"{opts.get('in_chans')} channels, but data.name={cfg.data.name} has {num_classes} "
                              f"classes and {in_chans} channels; use a teacher trained on the same dataset")
    try:
        teacher = load_model(cfg.kd.teacher, state=state).model
    except CheckpointError as e:
        raise CheckpointError(f"kd.teacher: {e}") from None
    for p in teacher.parameters():
        p.requires_grad_(False)
    teacher.to(device).train(cfg.kd.teacher_mode == "train")
    return teacher, state.get("run_id")
