"""Learning-rate schedules: a closed-form ``torch.optim.lr_scheduler.LRScheduler`` stepped once per batch.

With E epochs of S steps (batches), t the global step (0-based), e = t // S, N = E * S, lr0 = ``optim.lr``:

    constant:  lr0
    step:      lr0 * gamma ** (e // step_size)
    multistep: lr0 * gamma ** #{m in milestones : m <= e}
    linear:    lr0 - (lr0 - min_lr) * t / N                          (per batch)
    cosine:    min_lr + (lr0 - min_lr) * (1 + cos(pi * t / N)) / 2     (per batch)

Each value is computed from t directly (not by chained multiplication as torch's ``StepLR`` or
``CosineAnnealingLR`` do), so the learning rate of step t is the same float whether the run was resumed or not.
"""
from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import LRScheduler

__all__ = ["LRSchedule", "SCHEDULES", "ANNEALED"]

SCHEDULES = ("constant", "step", "multistep", "linear", "cosine")   # the names ``schedule.name`` accepts
ANNEALED = ("linear", "cosine")   # the schedules that end at ``schedule.min_lr``


class LRSchedule(LRScheduler):
    """Per-batch schedule of ``cfg.schedule`` (module docstring). Call ``step()`` after every optimiser step.

    After construction (and after :meth:`load_state_dict`) every param group's ``lr`` is ``lr_at(t)`` for the
    next step t. State: ``{"step": t}``, the same format as checkpoints written before this class existed.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, cfg, steps_per_epoch: int):
        if cfg.schedule.name not in SCHEDULES:
            raise ValueError(f"unknown schedule {cfg.schedule.name!r}; choose one of {SCHEDULES}")
        self.s, self.lr0 = cfg.schedule, cfg.optim.lr
        self.steps_per_epoch, self.total = steps_per_epoch, steps_per_epoch * cfg.epochs
        super().__init__(optimizer, last_epoch=-1)   # sets lr_at(0) through get_lr()

    @property
    def t(self) -> int:
        """The global step the current learning rate belongs to (steps taken so far)."""
        return self.last_epoch

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
        return s.min_lr + (self.lr0 - s.min_lr) * 0.5 * (1 + math.cos(math.pi * frac))   # cosine

    def get_lr(self) -> list[float]:
        return [self.lr_at(self.last_epoch) for _ in self.optimizer.param_groups]

    def _apply(self) -> None:
        lr = self.lr_at(self.last_epoch)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self._last_lr = [lr for _ in self.optimizer.param_groups]

    def state_dict(self) -> dict:
        return {"step": self.last_epoch}

    def load_state_dict(self, state: dict) -> None:
        self.last_epoch = int(state["step"])
        self._apply()
