"""Training loop: KD loss, schedules, checkpoints, resume, eval-only, MLflow records, CLI errors."""
from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from lsqbq import checkpoint as ckpt_io
from lsqbq.config import from_dict
from lsqbq.train import LRSchedule, accuracy_counts, kd_loss, load_checkpoint, main, run

from .conftest import tiny_config


# ------------------------------------------------------------------------------------------ KD loss


def _kd_reference(s, t, y, T, ce_weight, correction):
    """Per-sample loops over classes (independent of the vectorised implementation)."""
    total = 0.0
    for i in range(len(y)):
        ps = [math.exp(v / T) for v in s[i].tolist()]
        pt = [math.exp(v / T) for v in t[i].tolist()]
        zs, zt = sum(ps), sum(pt)
        kl = sum((b / zt) * (math.log(b / zt) - math.log(a / zs)) for a, b in zip(ps, pt)) * T * T
        e = [math.exp(v) for v in s[i].tolist()]
        ce = -math.log(e[y[i]] / sum(e))
        term = ce if (correction and int(t[i].argmax()) != int(y[i])) else kl
        total += (1 - ce_weight) * term + ce_weight * ce
    return total / len(y)


@pytest.mark.parametrize("T, ce_weight, correction", [(1.0, 0.0, False), (4.0, 0.0, False), (2.0, 0.3, False),
                                                      (5.0, 0.0, True), (3.0, 0.5, True)])
def test_kd_loss_matches_reference(T, ce_weight, correction):
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(12, 5, generator=g, dtype=torch.float64), torch.randn(12, 5, generator=g, dtype=torch.float64)
    y = torch.randint(0, 5, (12,), generator=g)
    got = kd_loss(s, t, y, T, ce_weight, correction).item()
    assert got == pytest.approx(_kd_reference(s, t, y, T, ce_weight, correction), rel=1e-9)


def test_teacher_correction_really_switches_to_ce():
    s = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.2, 0.1]])
    t = torch.tensor([[0.0, 3.0, 0.0], [3.0, 0.0, 0.0]])     # teacher wrong on sample 0, right on sample 1
    y = torch.tensor([0, 0])
    mixed = kd_loss(s, t, y, 2.0, 0.0, teacher_correction=True)
    ce0 = F.cross_entropy(s[:1], y[:1])
    kd1 = kd_loss(s[1:], t[1:], y[1:], 2.0)
    assert mixed.item() == pytest.approx((ce0.item() + kd1.item()) / 2, rel=1e-6)
    assert mixed.item() != pytest.approx(kd_loss(s, t, y, 2.0).item(), rel=1e-3)


def test_kd_with_teacher_equal_student_is_zero():
    s = torch.randn(4, 6)
    assert kd_loss(s, s.clone(), torch.zeros(4, dtype=torch.long), 3.0).item() == pytest.approx(0.0, abs=1e-6)


def test_accuracy_counts():
    logits = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.1, 0.05], [0.2, 0.3, 0.5]])
    assert accuracy_counts(logits, torch.tensor([1, 1, 0]), ks=(1, 2, 5)) == [1, 2, 3]


# ------------------------------------------------------------------------------------------ schedules


def _lrs(schedule: dict, epochs=4, steps=10, lr=1.0):
    cfg = from_dict({"epochs": epochs, "optim": {"lr": lr}, "schedule": schedule})
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr)
    sched = LRSchedule(opt, cfg, steps)
    out = []
    for _ in range(epochs * steps):
        out.append(sched.apply())
        assert opt.param_groups[0]["lr"] == out[-1]
        sched.step()
    return out


def test_schedules():
    assert _lrs({"name": "constant"}) == [1.0] * 40
    step = _lrs({"name": "step", "step_size": 2, "gamma": 0.5})
    assert step[:20] == [1.0] * 20 and step[20:] == [0.5] * 20
    ms = _lrs({"name": "multistep", "milestones": [1, 3], "gamma": 0.1})
    assert ms[0] == 1.0 and ms[10] == pytest.approx(0.1) and ms[25] == pytest.approx(0.1) and ms[30] == pytest.approx(0.01)
    lin = _lrs({"name": "linear", "min_lr": 0.2})
    assert lin[0] == 1.0 and lin[20] == pytest.approx(0.6) and all(a > b for a, b in zip(lin, lin[1:]))
    cos = _lrs({"name": "cosine"})
    assert cos[0] == 1.0 and cos[20] == pytest.approx(0.5) and cos[-1] == pytest.approx(0.5 * (1 + math.cos(math.pi * 39 / 40)))


# --------------------------------------------------------------------------------------- checkpoints


def test_atomic_save_and_weights_only_load(tmp_path):
    path = tmp_path / "c.pt"
    ckpt_io.save_atomic({"format": ckpt_io.FORMAT, "x": torch.ones(3), "rng": ckpt_io.rng_state()}, path)
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]  # no temporary file left behind
    state = ckpt_io.load(path)
    assert torch.equal(state["x"], torch.ones(3))
    torch.manual_seed(5)
    saved = ckpt_io.rng_state()
    a = torch.rand(3)
    ckpt_io.set_rng_state(ckpt_io.load(ckpt_io.save_atomic({"format": 1, **saved}, tmp_path / "r.pt")))
    assert torch.equal(torch.rand(3), a)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"format": 1, "x": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(Exception, match="[Ww]eights only|weights_only|Unsupported"):
        ckpt_io.load(tmp_path / "evil.pt")


# ------------------------------------------------------------------------------------------- runs


def test_train_writes_outputs_and_mlflow_run(tmp_path, fmnist_root):
    from mlflow.tracking import MlflowClient

    cfg = from_dict(tiny_config(tmp_path, fmnist_root, epochs=2))
    final = run(cfg)
    out = tmp_path / "run"
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("top1", "top5", "loss", "epochs", "run_id", "data_hash", "commit", "config_hash"):
        assert key in metrics
    assert metrics == json.loads(json.dumps(final)) and metrics["epochs"] == 2 and metrics["top1"] > 15  # chance: 10
    model, cfg2 = load_checkpoint(out / "checkpoint.pt")
    assert cfg2 == cfg and not model.training

    client = MlflowClient(tracking_uri=cfg.tracking.uri)
    r = client.get_run(metrics["run_id"])
    assert r.info.run_name == "resnet_small-als-1-wls-1-s0" and r.info.status == "FINISHED"
    assert r.data.params["model.x_quant"] == "ls-1" and r.data.params["data.train_subset"] == "512"
    assert r.data.params["model.layers"] == "[1, 1]" and len(r.data.params) > 40
    for name in ("train_loss", "val_loss", "top1", "top5", "lr", "images_per_s"):
        hist = client.get_metric_history(r.info.run_id, name)
        assert [m.step for m in hist] == [1, 2], name
    assert client.get_metric_history(r.info.run_id, "top1")[-1].value == pytest.approx(metrics["top1"])
    tags = r.data.tags
    assert tags["data_hash"] == metrics["data_hash"] and tags["torch_version"] == torch.__version__
    assert tags["git_dirty"] in ("true", "false", "unknown") and "git_commit" in tags and "lsqbq_version" in tags
    assert tags["device"].startswith("cpu")
    exp = client.get_experiment(r.info.experiment_id)
    assert exp.name == "test"
    arts = {a.path for a in client.list_artifacts(r.info.run_id)}
    assert {"config.yaml", "metrics.json", "checkpoint.pt"} <= arts


def test_resume_reaches_the_same_metrics(tmp_path, fmnist_root):
    """2 epochs in one go == 1 epoch, then --resume for the second (bitwise on CPU)."""
    base = dict(epochs=2, data={"augment": True}, model={"x_quant": "ls-2"})
    full = run(from_dict(tiny_config(tmp_path / "a", fmnist_root, **base)))
    cfg_b = tiny_config(tmp_path / "b", fmnist_root, **base)
    # the "killed" run: same config, stopped after its first epoch (a run with epochs=1 would use another schedule)
    state_after_1 = _train_one_epoch_then_stop(cfg_b)
    assert state_after_1["epoch"] == 1
    resumed = run(from_dict(cfg_b), resume=True)
    for key in ("top1", "top5", "loss"):
        assert resumed[key] == full[key], key
    a = ckpt_io.load(tmp_path / "a" / "run" / "checkpoint.pt")
    b = ckpt_io.load(tmp_path / "b" / "run" / "checkpoint.pt")
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert resumed["run_id"] == state_after_1["run_id"]  # the same MLflow run continues
    again = run(from_dict(cfg_b), resume=True)  # resuming a finished run only re-evaluates
    assert again["top1"] == full["top1"] and again["loss"] == pytest.approx(full["loss"], rel=1e-9)


def _train_one_epoch_then_stop(cfg_dict):
    """Run training and interrupt it right after the first checkpoint is written."""
    import lsqbq.train as T

    class Stop(Exception):
        pass

    original = T.ckpt_io.save_atomic

    def save_then_stop(obj, path):
        original(obj, path)
        raise Stop

    T.ckpt_io.save_atomic = save_then_stop
    try:
        with pytest.raises(Stop):
            run(from_dict(cfg_dict))
    finally:
        T.ckpt_io.save_atomic = original
    return ckpt_io.load(f"{cfg_dict['output']['dir']}/checkpoint.pt")


def test_eval_only_and_kd_student(tmp_path, fmnist_root):
    from mlflow.tracking import MlflowClient

    teacher_cfg = tiny_config(tmp_path / "t", fmnist_root, model={"x_quant": "fp", "w_quant": "fp"})
    teacher = run(from_dict(teacher_cfg))
    again = run(from_dict(teacher_cfg), eval_only=True)
    assert again["top1"] == teacher["top1"] and again["loss"] == pytest.approx(teacher["loss"], rel=1e-9)
    from lsqbq.evaluate import main as evaluate_main

    ck = f"{teacher_cfg['output']['dir']}/checkpoint.pt"
    assert evaluate_main(["--checkpoint", ck, "--out", str(tmp_path / "e.json"), "--device", "cpu"]) == 0
    ev = json.loads((tmp_path / "e.json").read_text())
    assert ev["top1"] == teacher["top1"] and ev["w_quant"] == "fp" and ev["source_run_id"] == teacher["run_id"]
    assert evaluate_main(["--checkpoint", ck, "--w-quant", "ls-1", "--out", str(tmp_path / "q.json")]) == 0
    ptq = json.loads((tmp_path / "q.json").read_text())
    assert ptq["w_quant"] == "ls-1" and ptq["loss"] != ev["loss"]  # post-training 1-bit weights change the model
    student_cfg = tiny_config(tmp_path / "s", fmnist_root, kd={
        "teacher": f"{teacher_cfg['output']['dir']}/checkpoint.pt", "temperature": 2.0, "teacher_correction": True})
    student = run(from_dict(student_cfg))
    r = MlflowClient(tracking_uri=student_cfg["tracking"]["uri"]).get_run(student["run_id"])
    assert r.data.tags["teacher_run_id"] == teacher["run_id"] and student["teacher_run_id"] == teacher["run_id"]
    assert r.data.params["kd.temperature"] == "2.0"


def test_cli_reports_config_errors(tmp_path, capsys):
    assert main(["--set", "model.x_quant=ls-9"]) == 2
    assert "model.x_quant" in capsys.readouterr().err
    assert main(["--set", "data.root=" + str(tmp_path / "none"), "--set", "tracking.enabled=false",
                 "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert str(tmp_path / "none") in err and "lsqbq data prepare" in err
