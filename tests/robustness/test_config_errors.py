"""`lsqbq train` with a bad config: one line naming the key (and file, line), exit code 2, before any data
loads, before any MLflow run, nothing written."""
from __future__ import annotations

import pytest
import torch

from lsqbq.cli import run_command
from lsqbq.errors import ConfigError
from lsqbq.train import main

from ._helpers import assert_cli_error, assert_no_partial_outputs, snapshot

CODE = ConfigError.exit_code


def _train(tmp_path, capsys, *args, data_root=None):
    """``lsqbq train ARGS`` in-process, data under a missing root (reaching the data would be a data error),
    tracking in tmp_path; -> (exit code, the one stderr line)."""
    base = ["--set", f"data.root={data_root or tmp_path / 'no-data'}", "--set",
            f"tracking.uri=sqlite:///{tmp_path / 'store' / 'mlflow.db'}", "--out", str(tmp_path / "out")]
    capsys.readouterr()
    code = run_command("train", main, [*base, *map(str, args)])
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(lines) == 1, lines
    return code, lines[0]


def _assert_nothing_written(tmp_path):
    assert not (tmp_path / "out").exists()
    assert not (tmp_path / "store" / "mlflow.db").exists() or _no_runs(tmp_path / "store" / "mlflow.db")


def _no_runs(db) -> bool:
    import sqlite3

    with sqlite3.connect(db) as con:
        return con.execute("select count(*) from runs").fetchone()[0] == 0


BAD_SETS = [
    ("optim.lr=.inf", "optim.lr: must be a finite number, got inf"),
    ("optim.lr=.nan", "optim.lr: must be a finite number, got nan"),
    ("optim.lr=-0.1", "optim.lr: must be > 0"),
    ("optim.weight_decay=.nan", "optim.weight_decay: must be a finite number"),
    ("optim.momentum=1.5", "optim.momentum: must be < 1"),
    ("model.clamp=.inf", "model.clamp: must be a finite number"),
    ("model.clamp=0", "model.clamp: must be > 0"),
    ("schedule.gamma=-.inf", "schedule.gamma: must be a finite number"),
    ("schedule.min_lr=.nan", "schedule.min_lr: must be a finite number"),
    ("seed=-1", "seed: must be >= 0, got -1 (seeds are non-negative integers)"),
    ("seeds=[-1]", "unknown key 'seeds'"),
    ("epochs=0", "epochs: must be >= 1"),
    ("epochs=ten", "epochs: expected int, got str 'ten'"),
    ("data.batch_size=1", "data.batch_size: must be >= 2, got 1 (batch normalisation needs"),
    ("data.train_subset=0", "data.train_subset: must be >= 1"),
    ("model.x_quant=ls-9", "model.x_quant: unknown scheme 'ls-9'; expected one of fp, ls-1, ls-2, ls-T, gf-<k>"),
    ("model.w_quant=gf-0", "model.w_quant: unknown scheme 'gf-0'"),
    ("model.widht=4", "unknown key 'model.widht'"),
    ("model.layers=[1, two]", "model.layers[1]: expected int, got str 'two'"),
    ("kd.ce_weight=0.5", "kd.teacher: kd.teacher_correction / kd.ce_weight need a teacher checkpoint"),
    ("device=tpu", "device: 'tpu' is not one of"),
    ("progress=loud", "progress: 'loud' is not one of"),
    ("model", "--set 'model': expected key.sub=value"),
    ("tracking.tags={a: 1, a: 2}", "duplicate key 'a'"),
]


@pytest.mark.parametrize("override, message", BAD_SETS, ids=[s for s, _ in BAD_SETS])
def test_bad_values_name_the_key(tmp_path, capsys, override, message):
    code, line = _train(tmp_path, capsys, "--set", override)
    assert code == CODE and line.startswith("lsqbq train: ") and message in line, line
    _assert_nothing_written(tmp_path)


def test_unknown_model_is_reported_before_the_data_loads(tmp_path, capsys):
    code, line = _train(tmp_path, capsys, "--set", "model.name=resnet99")
    assert code == CODE and "model.name: unknown model 'resnet99'; choose one of" in line and "resnet18" in line
    _assert_nothing_written(tmp_path)


def test_duplicate_yaml_key_names_file_key_and_line(tmp_path, capsys):
    cfg = tmp_path / "dup.yaml"
    cfg.write_text("seed: 0\nepochs: 1\noptim:\n  lr: 0.1\nepochs: 2\n")
    code, line = _train(tmp_path, capsys, "--config", cfg)
    assert code == CODE and line == (f"lsqbq train: {cfg}, line 5, column 1: invalid YAML: duplicate key 'epochs' "
                                     "(first given on line 2); keep one of them")
    _assert_nothing_written(tmp_path)


@pytest.mark.parametrize("text, line_no", [("optim: {lr: 0.1\nseed: 0\n", 2), ("seed: 0\n epochs: [1\n", 2),
                                           ("model:\n  width: 4\n x_quant: fp\n", 3)])
def test_yaml_syntax_error_names_file_and_line(tmp_path, capsys, text, line_no):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(text)
    code, line = _train(tmp_path, capsys, "--config", cfg)
    assert code == CODE and line.startswith(f"lsqbq train: {cfg}, line {line_no}, ") and "invalid YAML" in line, line
    _assert_nothing_written(tmp_path)


def test_missing_config_file(tmp_path, capsys):
    code, line = _train(tmp_path, capsys, "--config", tmp_path / "nope.yaml")
    assert code == CODE and f"config file not found: {tmp_path / 'nope.yaml'}" in line


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_a_gpu(tmp_path, capsys):
    code, line = _train(tmp_path, capsys, "--set", "device=cuda")
    assert code == CODE and "device: 'cuda' requested but torch finds no CUDA device; set device: cpu" in line
    _assert_nothing_written(tmp_path)


@pytest.mark.parametrize("uri, needle", [("bogus://nowhere", "cannot open the MLflow store 'bogus://nowhere'"),
                                         ("sqlite:///{file}/mlflow.db", "cannot create directory")])
def test_bogus_tracking_uri(tmp_path, capsys, uri, needle):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    code, line = _train(tmp_path, capsys, "--set", f"tracking.uri={uri.format(file=blocker)}")
    assert code == CODE and line.startswith("lsqbq train: tracking.uri: ") and needle in line, line
    assert not (tmp_path / "out").exists()


def test_out_naming_an_existing_file_fails_before_the_run(tmp_path, capsys):
    target = tmp_path / "out"
    target.write_text("not a directory")
    capsys.readouterr()
    code = run_command("train", main, ["--set", f"data.root={tmp_path / 'no-data'}", "--out", str(target),
                                       "--set", f"tracking.uri=sqlite:///{tmp_path / 'store' / 'mlflow.db'}"])
    line = capsys.readouterr().err.strip()
    assert code == CODE and line == (f"lsqbq train: output.dir (--out): {target} exists and is not a directory; "
                                     "choose another --out")
    assert target.read_text() == "not a directory" and not (tmp_path / "store").exists()   # no store, no run


def test_resume_and_eval_only_together(tmp_path, capsys):
    code, line = _train(tmp_path, capsys, "--resume", "--eval-only")
    assert code == CODE and "--resume and --eval-only exclude each other" in line


def test_config_error_through_the_command_line(cli, tmp_path):
    """The real entry point in a subprocess: one line, exit 2, no traceback, no network, nothing written."""
    before = snapshot(tmp_path)
    result = cli("train", "--set", "optim.lr=.nan", "--set", "data.root=nowhere", "--out", tmp_path / "out")
    assert_cli_error(result, "train", CODE, "optim.lr", "finite")
    assert_no_partial_outputs(tmp_path, before, allowed=tuple(p.name for p in tmp_path.glob("netguard-*")))
