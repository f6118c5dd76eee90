"""LR schedules: values of every schedule, bit-for-bit equal to the hand-written per-step schedule they replace,
and resumable mid-run."""
from __future__ import annotations

import math

import pytest
import torch

from lsqbq.config import from_dict
from lsqbq.schedules import LRSchedule


class _PreviousSchedule:
    """The schedule the training loop used before it moved onto torch.optim.lr_scheduler (kept verbatim as the
    reference: lr applied before each step from the global step t)."""

    def __init__(self, cfg, steps_per_epoch):
        self.s, self.lr0 = cfg.schedule, cfg.optim.lr
        self.steps_per_epoch, self.total = steps_per_epoch, steps_per_epoch * cfg.epochs

    def lr_at(self, t):
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
        raise ValueError(s.name)


def _used_lrs(cfg, steps, optimizer="adam", resume_at=None):
    """The lr each optimiser step of a run sees (optionally rebuilding everything from state_dicts at a step)."""
    p = torch.zeros(1, requires_grad=True)
    make = (lambda: torch.optim.Adam([p], lr=cfg.optim.lr)) if optimizer == "adam" else \
        (lambda: torch.optim.SGD([p], lr=cfg.optim.lr, momentum=0.9))
    opt = make()
    sched = LRSchedule(opt, cfg, steps)
    out = []
    for t in range(cfg.epochs * steps):
        if t == resume_at:
            saved_opt, saved_sched = opt.state_dict(), sched.state_dict()
            opt = make()
            sched = LRSchedule(opt, cfg, steps)
            opt.load_state_dict(saved_opt)
            sched.load_state_dict(saved_sched)
        out.append(opt.param_groups[0]["lr"])
        assert sched.get_last_lr() == [out[-1]]
        p.grad = torch.ones(1)
        opt.step()
        sched.step()
    return out


SCHEDULES = [
    {"name": "constant"},
    {"name": "step", "step_size": 2, "gamma": 0.5},
    {"name": "step", "step_size": 1, "gamma": 0.3},
    {"name": "multistep", "milestones": [1, 3], "gamma": 0.1},
    {"name": "multistep", "milestones": [0, 2, 2], "gamma": 0.7},
    {"name": "linear", "min_lr": 0.2},
    {"name": "linear", "min_lr": 2e-7},
    {"name": "cosine"},
    {"name": "cosine", "min_lr": 1e-5},
]


@pytest.mark.parametrize("schedule", SCHEDULES, ids=lambda s: "-".join(str(v) for v in s.values()))
@pytest.mark.parametrize("epochs, steps, lr", [(4, 10, 1.0), (3, 7, 2e-3), (1, 1, 0.05)])
def test_same_lr_as_the_previous_schedule_bit_for_bit(schedule, epochs, steps, lr):
    if "min_lr" in schedule:
        schedule = {**schedule, "min_lr": schedule["min_lr"] * lr}
    cfg = from_dict({"epochs": epochs, "optim": {"lr": lr}, "schedule": schedule})
    ref = _PreviousSchedule(cfg, steps)
    assert _used_lrs(cfg, steps) == [ref.lr_at(t) for t in range(epochs * steps)]   # exact float equality


@pytest.mark.parametrize("schedule", SCHEDULES[1:], ids=lambda s: s["name"])
def test_resume_mid_run_continues_the_schedule(schedule):
    cfg = from_dict({"epochs": 4, "optim": {"lr": 1.0}, "schedule": schedule})
    assert _used_lrs(cfg, 10, "sgd", resume_at=17) == _used_lrs(cfg, 10, "sgd")


def test_schedule_values():
    def lrs(schedule):
        return _used_lrs(from_dict({"epochs": 4, "optim": {"lr": 1.0}, "schedule": schedule}), 10)

    assert lrs({"name": "constant"}) == [1.0] * 40
    step = lrs({"name": "step", "step_size": 2, "gamma": 0.5})
    assert step[:20] == [1.0] * 20 and step[20:] == [0.5] * 20
    ms = lrs({"name": "multistep", "milestones": [1, 3], "gamma": 0.1})
    assert ms[0] == 1.0 and ms[10] == pytest.approx(0.1) and ms[25] == pytest.approx(0.1) and ms[30] == pytest.approx(0.01)
    lin = lrs({"name": "linear", "min_lr": 0.2})
    assert lin[0] == 1.0 and lin[20] == pytest.approx(0.6) and all(a > b for a, b in zip(lin, lin[1:]))
    cos = lrs({"name": "cosine"})
    assert cos[0] == 1.0 and cos[20] == pytest.approx(0.5) and cos[-1] == pytest.approx(0.5 * (1 + math.cos(math.pi * 39 / 40)))


def test_state_is_the_checkpoint_format():
    cfg = from_dict({"epochs": 2, "optim": {"lr": 1.0}, "schedule": {"name": "linear"}})
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    sched = LRSchedule(opt, cfg, 5)
    assert sched.state_dict() == {"step": 0} and sched.t == 0
    sched.load_state_dict({"step": 7})            # as stored by checkpoints of earlier versions
    assert sched.t == 7 and opt.param_groups[0]["lr"] == pytest.approx(1.0 - 0.7)
