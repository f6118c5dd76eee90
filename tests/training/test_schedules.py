"""LR schedules: every schedule equals torch.optim.lr_scheduler's own scheduler of the same name, stepped per
batch; hand-computed values; resumable mid-run."""
from __future__ import annotations

import math

import pytest
import torch

from lsqbq.config import from_dict
from lsqbq.schedules import SCHEDULES as SCHEDULE_NAMES
from lsqbq.schedules import LRSchedule


def _torch_scheduler(opt, cfg, steps):
    """torch.optim.lr_scheduler's own scheduler for ``cfg.schedule``, stepped per batch (the independent reference):
    epochs become ``steps`` batches each, the annealed schedules run over all ``epochs * steps`` batches."""
    s, lr0, total = cfg.schedule, cfg.optim.lr, cfg.epochs * steps
    sched = torch.optim.lr_scheduler
    return {
        "constant": lambda: sched.ConstantLR(opt, factor=1.0, total_iters=0),
        "step": lambda: sched.StepLR(opt, step_size=s.step_size * steps, gamma=s.gamma),
        "multistep": lambda: sched.MultiStepLR(opt, milestones=[m * steps for m in s.milestones], gamma=s.gamma),
        "linear": lambda: sched.LinearLR(opt, start_factor=1.0, end_factor=s.min_lr / lr0, total_iters=total),
        "cosine": lambda: sched.CosineAnnealingLR(opt, T_max=total, eta_min=s.min_lr),
    }[s.name]()


def _torch_lrs(cfg, steps):
    p = torch.zeros(1, requires_grad=True)
    opt = torch.optim.SGD([p], lr=cfg.optim.lr)
    sched = _torch_scheduler(opt, cfg, steps)
    out = []
    for _ in range(cfg.epochs * steps):
        out.append(opt.param_groups[0]["lr"])
        p.grad = torch.ones(1)
        opt.step()
        sched.step()
    return out


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
def test_same_lr_as_torchs_own_scheduler(schedule, epochs, steps, lr):
    """Closed form per step vs torch's chained updates: equal up to the rounding the chain accumulates."""
    if "min_lr" in schedule:
        schedule = {**schedule, "min_lr": schedule["min_lr"] * lr}
    cfg = from_dict({"epochs": epochs, "optim": {"lr": lr}, "schedule": schedule})
    assert _used_lrs(cfg, steps) == pytest.approx(_torch_lrs(cfg, steps), rel=1e-9, abs=1e-12 * lr)


def test_every_schedule_is_checked_against_torch():
    assert {s["name"] for s in SCHEDULES} == set(SCHEDULE_NAMES)


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
