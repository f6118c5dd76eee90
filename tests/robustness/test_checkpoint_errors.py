"""Bad checkpoints for `lsqbq evaluate`, `lsqbq train --eval-only / --resume` and `kd.teacher`: one line naming the
file and what to do, exit code 4, pickled code never runs, nothing written; `--x-quant` with another bit width."""
from __future__ import annotations

import json
import os
import random
import stat
import warnings
import zipfile

import pytest
import torch
from training.conftest import fmnist_root, tiny_config  # noqa: F401  (fixture)

from lsqbq import checkpoint as ckpt_io
from lsqbq.cli import run_command
from lsqbq.config import from_dict
from lsqbq.errors import CheckpointError, ConfigError
from lsqbq.evaluate import main as evaluate_main
from lsqbq.train import main as train_main
from lsqbq.train import run

from ._helpers import assert_cli_error

CODE = CheckpointError.exit_code


@pytest.fixture(scope="module")
def trained(tmp_path_factory, fmnist_root):  # noqa: F811
    """A tiny ls-1/ls-1 run (1 epoch, 128 images) tracked in its own store: its config dict and checkpoint."""
    root = tmp_path_factory.mktemp("trained")
    cfg = tiny_config(root, fmnist_root, data={"train_subset": 128, "test_subset": 64})
    run(from_dict(cfg))
    return cfg, root / "run" / "checkpoint.pt"


def _cmd(capsys, func, command, *args):
    capsys.readouterr()
    code = run_command(command, func, [str(a) for a in args])
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"lsqbq {command}: ") and "Traceback" not in lines[0]
    return code, lines[0]


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _bad_files(tmp_path, good):
    raw = good.read_bytes()
    files = {
        "empty": b"", "truncated": raw[: len(raw) // 3], "truncated-tail": raw[:-100],
        "random": random.Random(7).randbytes(8192), "yaml-text": b"model: {name: resnet_small}\n",
    }
    paths = {}
    for name, data in files.items():
        paths[name] = tmp_path / f"{name}.pt"
        paths[name].write_bytes(data)
    torch.save(torch.ones(3), tmp_path / "tensor.pt")
    torch.save({"model": {}}, tmp_path / "foreign-dict.pt")
    state = ckpt_io.load(good)
    torch.save({k: v for k, v in state.items() if k != "model_options"}, tmp_path / "no-options.pt")
    torch.save({**state, "model_options": {}}, tmp_path / "empty-options.pt")
    torch.save({"format": 1, "config": state["config"], "model_options": state["model_options"],
                "model": _Evil(str(tmp_path / "PWNED"))}, tmp_path / "code.pt")
    for name in ("tensor", "foreign-dict", "no-options", "empty-options", "code"):
        paths[name] = tmp_path / f"{name}.pt"
    paths["entry-twice"] = tmp_path / "entry-twice.pt"
    _with_an_entry_twice(good, paths["entry-twice"])
    return paths


def _with_an_entry_twice(good, dst):
    """``dst``: the zip checkpoint ``good`` with a zeroed second copy of its weights' largest entry appended."""
    dst.write_bytes(good.read_bytes())
    with zipfile.ZipFile(good) as z:
        big = max(z.infolist(), key=lambda i: i.file_size)
    with warnings.catch_warnings(), zipfile.ZipFile(dst, "a") as z:
        warnings.simplefilter("ignore", UserWarning)  # zipfile's "Duplicate name"
        z.writestr(big.filename, bytes(big.file_size))
    return big.filename


EXPECT = {
    "empty": "empty file (0 bytes)", "truncated": "truncated or not a torch checkpoint",
    "truncated-tail": "truncated or not a torch checkpoint", "random": "not a torch checkpoint",
    "yaml-text": "not a torch checkpoint", "tensor": "not an lsqbq checkpoint (it holds a Tensor",
    "foreign-dict": "without 'format': 1", "no-options": "missing model_options",
    "empty-options": "holds no model options", "code": "refused to load: it holds Python code",
    "entry-twice": "damaged: the zip archive holds the entry '",
}


def test_evaluate_bad_checkpoints(tmp_path, capsys, trained):
    paths = _bad_files(tmp_path, trained[1])
    for name, path in paths.items():
        code, line = _cmd(capsys, evaluate_main, "evaluate", "--checkpoint", path, "--out", tmp_path / "e.json")
        assert code == CODE and f"{path}: " in line and EXPECT[name] in line, (name, line)
        assert not (tmp_path / "e.json").exists()
    assert not (tmp_path / "PWNED").exists()                       # the pickled call never ran
    code, line = _cmd(capsys, evaluate_main, "evaluate", "--checkpoint", tmp_path / "missing.pt")
    assert code == CODE and f"checkpoint not found: {tmp_path / 'missing.pt'}" in line
    code, line = _cmd(capsys, evaluate_main, "evaluate", "--checkpoint", tmp_path)
    assert code == CODE and "is a directory" in line


def test_code_checkpoint_through_the_command_line(cli, tmp_path, trained):
    paths = _bad_files(tmp_path, trained[1])
    result = cli("evaluate", "--checkpoint", paths["code"])
    assert_cli_error(result, "evaluate", CODE, str(paths["code"]), "weights_only")
    assert not (tmp_path / "PWNED").exists()


@pytest.mark.parametrize("name", ["tensor", "code", "truncated", "missing"])
def test_bad_teacher_fails_before_the_data_and_the_run(tmp_path, capsys, trained, name):
    teacher = _bad_files(tmp_path, trained[1]).get(name, tmp_path / "missing.pt")
    code, line = _cmd(capsys, train_main, "train", "--set", f"kd.teacher={teacher}", "--set", "data.root=/nonexistent",
                      "--set", "tracking.enabled=false", "--out", tmp_path / "out")
    assert code == CODE and line.startswith(f"lsqbq train: kd.teacher: ") and str(teacher) in line, line
    assert not (tmp_path / "out").exists() and not (tmp_path / "PWNED").exists()


def test_teacher_of_another_dataset(tmp_path, capsys, trained, fmnist_root):  # noqa: F811
    state = ckpt_io.load(trained[1])
    state["model_options"] = {**state["model_options"], "num_classes": 100}
    torch.save(state, tmp_path / "t100.pt")
    code, line = _cmd(capsys, train_main, "train", "--set", f"kd.teacher={tmp_path / 't100.pt'}", "--set",
                      f"data.root={fmnist_root}", "--set", "tracking.enabled=false", "--out", tmp_path / "out")
    assert code == CODE and "predicts 100 classes" in line and "has 10 classes" in line


def test_eval_only_without_a_checkpoint(tmp_path, capsys):
    code, line = _cmd(capsys, train_main, "train", "--eval-only", "--set", "data.root=/nonexistent",
                      "--set", "tracking.enabled=false", "--out", tmp_path / "out")
    assert code == CODE and f"--eval-only: no checkpoint at {tmp_path / 'out' / 'checkpoint.pt'}" in line
    assert not (tmp_path / "out").exists()


def test_eval_only_with_another_width(tmp_path, capsys, trained):
    cfg, ckpt = trained
    code, line = _cmd(capsys, train_main, "train", "--eval-only", "--set", "model.width=8", "--set",
                      f"data.root={cfg['data']['root']}", "--set", "tracking.enabled=false",
                      "--set", "model.layers=[1, 1]", "--set", "model.stem_stride=2",
                      "--set", "model.x_quant=ls-1", "--set", "model.w_quant=ls-1", "--out", ckpt.parent)
    assert code == CODE and f"{ckpt}: the weights do not fit the model (shape of" in line and "width" in line, line
    assert not (ckpt.parent / "eval_metrics.json").exists()


def _resume_args(cfg, out, *extra):
    path = out.parent / "cfg.json"
    path.write_text(json.dumps({**cfg, "output": {"dir": str(out)}}))
    return ["--config", path, "--resume", "--set", "data.root=/nonexistent", *extra]


def test_resume_over_a_checkpoint_of_another_config(tmp_path, capsys, trained):
    cfg, ckpt = trained
    out = tmp_path / "out"
    out.mkdir()
    (out / "checkpoint.pt").write_bytes(ckpt.read_bytes())
    code, line = _cmd(capsys, train_main, "train", *_resume_args(cfg, out, "--set", "optim.lr=0.5"))
    assert code == CODE and f"--resume: {out / 'checkpoint.pt'} was written by a different config" in line
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt"]


def test_resume_whose_run_is_in_another_store(tmp_path, capsys, trained):
    cfg, ckpt = trained
    out = tmp_path / "out"
    out.mkdir()
    (out / "checkpoint.pt").write_bytes(ckpt.read_bytes())
    other = f"sqlite:///{tmp_path / 'other.db'}"
    run_id = ckpt_io.load(ckpt)["run_id"]
    code, line = _cmd(capsys, train_main, "train", *_resume_args(cfg, out, "--set", f"tracking.uri={other}"))
    assert code == CODE and f"its MLflow run {run_id} is not in the store '{other}'" in line, line


def test_evaluate_with_another_activation_bit_width(tmp_path, capsys, trained, fmnist_root):  # noqa: F811
    """`--x-quant` with another k works (was an x_scales_ema size mismatch); a moving average recorded for one
    scheme is not silently reused for another."""
    _, ckpt = trained
    code = run_command("evaluate", evaluate_main, ["--checkpoint", str(ckpt), "--x-quant", "ls-2", "--out",
                                                   str(tmp_path / "x.json")])
    assert code == 0 and json.loads((tmp_path / "x.json").read_text())["x_quant"] == "ls-2"
    ema_cfg = tiny_config(tmp_path / "ema", fmnist_root, data={"train_subset": 128, "test_subset": 64},
                          model={"act_stats": "eval_only"}, tracking={"enabled": False})
    run(from_dict(ema_cfg))
    ema = tmp_path / "ema" / "run" / "checkpoint.pt"
    code, line = _cmd(capsys, evaluate_main, "evaluate", "--checkpoint", ema, "--x-quant", "gf-3")
    assert code == ConfigError.exit_code and "--x-quant gf-3" in line and "--set model.act_stats=off" in line
    code = run_command("evaluate", evaluate_main, ["--checkpoint", str(ema), "--x-quant", "gf-3", "--set",
                                                   "model.act_stats=off", "--out", str(tmp_path / "g.json")])
    assert code == 0 and json.loads((tmp_path / "g.json").read_text())["x_quant"] == "gf-3"
    code, line = _cmd(capsys, evaluate_main, "evaluate", "--checkpoint", ema, "--x-quant", "ls-9")
    assert code == ConfigError.exit_code and "--x-quant: unknown scheme 'ls-9'" in line


def test_a_repeated_entry_is_named_with_the_file(tmp_path, capsys, trained):
    """torch.load alone reads one of the two copies without a word; lsqbq evaluate refuses the file (exit 4)."""
    bad = tmp_path / "twice.pt"
    entry = _with_an_entry_twice(trained[1], bad)
    code, line = _cmd(capsys, evaluate_main, "evaluate", "--checkpoint", bad, "--out", tmp_path / "e.json")
    assert code == CODE, line
    assert f"{bad}: damaged: the zip archive holds the entry {entry!r} 2 times" in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["twice.pt"]  # nothing written


def test_run_outputs_get_the_permissions_the_umask_gives(trained):
    """The checkpoint and metrics.json of a real run: ``0o666 & ~umask`` (what ``open()`` gives), not ``0600``."""
    umask = os.umask(0)
    os.umask(umask)
    run_dir = trained[1].parent
    for name in ("checkpoint.pt", "metrics.json"):
        assert stat.S_IMODE((run_dir / name).stat().st_mode) == 0o666 & ~umask, name
