"""Training loop: outputs, MLflow records, resume, eval-only, KD students, evaluation, CLI errors."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lsqbq import checkpoint as ckpt_io
from lsqbq.cli import run_command
from lsqbq.config import from_dict
from lsqbq.errors import ConfigError
from lsqbq.evaluate import accuracy_counts
from lsqbq.train import main, run

from .conftest import tiny_config


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
    loaded = ckpt_io.load_model(out / "checkpoint.pt")
    assert loaded.config == cfg and not loaded.model.training

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


def test_resume_reaches_the_same_metrics(tmp_path, fmnist_root, capsys):
    """2 epochs in one go == 1 epoch, then --resume for the second (bitwise on CPU)."""
    from mlflow.tracking import MlflowClient

    base = dict(epochs=2, data={"augment": True}, model={"x_quant": "ls-2"})
    full = run(from_dict(tiny_config(tmp_path / "a", fmnist_root, **base)))
    cfg_b = tiny_config(tmp_path / "b", fmnist_root, **base)
    # the "killed" run: same config, stopped after its first epoch (a run with epochs=1 would use another schedule)
    state_after_1 = _train_one_epoch_then_stop(cfg_b)
    assert state_after_1["epoch"] == 1
    client = MlflowClient(tracking_uri=cfg_b["tracking"]["uri"])
    interrupted = client.get_run(state_after_1["run_id"])
    assert interrupted.info.status == "FAILED" and interrupted.data.tags["error"].startswith("Stop")
    capsys.readouterr()
    resumed = run(from_dict(cfg_b), resume=True)
    assert "resuming from epoch 1 of 2" in capsys.readouterr().out
    finished = client.get_run(state_after_1["run_id"])
    assert finished.info.status == "FINISHED" and "error" not in finished.data.tags
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
    assert not Path(f"{cfg_dict['output']['dir']}/checkpoint.pt").exists()  # published after the last epoch only
    return ckpt_io.load(f"{cfg_dict['output']['dir']}/resume.pt")


def test_published_checkpoint_is_slim_and_a_finished_run_needs_no_working_one(tmp_path, fmnist_root, capsys):
    """checkpoint.pt holds what rebuilds the model (weights, scales, moving averages, options, config) and no
    optimiser / RNG state; resume.pt holds both. Without resume.pt a finished run only re-evaluates; asking it for
    more epochs is a clear error, not a silent restart."""
    from lsqbq.errors import CheckpointError

    cfg = tiny_config(tmp_path, fmnist_root, epochs=1, model={"x_quant": "ls-2"})
    first = run(from_dict(cfg))
    out = tmp_path / "run"
    published, working = ckpt_io.load(out / "checkpoint.pt"), ckpt_io.load(out / "resume.pt")
    assert not {"optimizer", "schedule", "rng"} & set(published) and set(ckpt_io.RESUME_KEYS) <= set(working)
    assert (out / "checkpoint.pt").stat().st_size < 0.6 * (out / "resume.pt").stat().st_size
    for k, v in working["model"].items():
        assert torch.equal(published["model"][k], v), k
    assert any(k.endswith("x_scales_ema") and int(published["model"][k[:-len("x_scales_ema")] + "x_ema_updates"]) > 0
               for k in published["model"])  # moving averages recorded although act_stats is off
    (out / "resume.pt").unlink()
    capsys.readouterr()
    again = run(from_dict(cfg), resume=True)
    assert "all 1 epochs done; evaluating only" in capsys.readouterr().out and again["top1"] == first["top1"]
    with pytest.raises(CheckpointError, match="without optimiser state .*resume.pt"):
        run(from_dict({**cfg, "epochs": 2}), resume=True)


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
    # another activation bit width (x_scales_ema of another size in the checkpoint) evaluates too
    assert evaluate_main(["--checkpoint", ck, "--x-quant", "ls-2", "--w-quant", "ls-1",
                          "--out", str(tmp_path / "x.json")]) == 0
    xq = json.loads((tmp_path / "x.json").read_text())
    assert (xq["x_quant"], xq["w_quant"]) == ("ls-2", "ls-1") and xq["loss"] != ptq["loss"]
    student_cfg = tiny_config(tmp_path / "s", fmnist_root, kd={
        "teacher": f"{teacher_cfg['output']['dir']}/checkpoint.pt", "temperature": 2.0, "teacher_correction": True})
    student = run(from_dict(student_cfg))
    r = MlflowClient(tracking_uri=student_cfg["tracking"]["uri"]).get_run(student["run_id"])
    assert r.data.tags["teacher_run_id"] == teacher["run_id"] and student["teacher_run_id"] == teacher["run_id"]
    assert r.data.params["kd.temperature"] == "2.0"


def test_accuracy_counts():
    logits = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.1, 0.05], [0.2, 0.3, 0.5]])
    assert accuracy_counts(logits, torch.tensor([1, 1, 0]), ks=(1, 2, 5)) == [1, 2, 3]


def test_cli_reports_config_and_data_errors(tmp_path, capsys):
    import lsqbq.data

    with pytest.raises(ConfigError, match="model.x_quant"):
        main(["--set", "model.x_quant=ls-9"])
    assert run_command("train", main, ["--set", "model.x_quant=ls-9"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("lsqbq train: model.x_quant: unknown scheme 'ls-9'") and "\n" not in err
    code = run_command("train", main, ["--set", "data.root=" + str(tmp_path / "none"), "--set",
                                       "tracking.enabled=false", "--out", str(tmp_path / "o")])
    assert code == getattr(lsqbq.data.DataError, "exit_code", 1)
    err = capsys.readouterr().err
    assert str(tmp_path / "none") in err and "lsqbq data prepare" in err
    assert not (tmp_path / "o").exists()                      # nothing written when the data cannot load
