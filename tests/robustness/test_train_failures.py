"""Training that cannot succeed fails with TrainingError (exit 6) and never reports success; every failure after
the MLflow run starts ends it FAILED (KILLED on an interrupt) with the error; nothing partial is left behind."""
from __future__ import annotations

import sqlite3

import pytest
from training.conftest import fmnist_root, tiny_config  # noqa: F401  (fixture)

import lsqbq.train as T
from lsqbq import checkpoint as ckpt_io
from lsqbq.cli import run_command
from lsqbq.config import from_dict
from lsqbq.errors import TrainingError

CODE = TrainingError.exit_code


def _runs(cfg) -> list:
    """(status, error tag) of every run in the config's store."""
    db = cfg["tracking"]["uri"][len("sqlite:///"):]
    with sqlite3.connect(db) as con:
        rows = con.execute("select run_uuid, status from runs").fetchall()
        tags = dict(con.execute("select run_uuid, value from tags where key = 'error'").fetchall())
    return [(status, tags.get(rid)) for rid, status in rows]


def _files(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and p.suffix != ".db"
                  and not p.name.endswith(".lock"))


def _cfg(tmp_path, fmnist_root, **sections):  # noqa: F811
    sections.setdefault("data", {})
    sections["data"] = {"train_subset": 128, "test_subset": 64, **sections["data"]}
    return tiny_config(tmp_path, fmnist_root, **sections)


def test_one_training_image_fails_before_the_run(tmp_path, fmnist_root, capsys):  # noqa: F811
    cfg = _cfg(tmp_path, fmnist_root, data={"train_subset": 1})
    with pytest.raises(TrainingError, match=r"^data: 1 training image\(s\) per process cannot fill a batch of 2"):
        T.run(from_dict(cfg))
    assert _runs(cfg) == [] and not (tmp_path / "run").exists()


def test_a_tail_of_one_image_is_skipped_but_training_happens(tmp_path, fmnist_root):  # noqa: F811
    cfg = _cfg(tmp_path, fmnist_root, data={"train_subset": 65, "batch_size": 64}, tracking={"enabled": False})
    final = T.run(from_dict(cfg))
    assert final["epochs"] == 1 and ckpt_io.load(tmp_path / "run" / "resume.pt")["schedule"] == {"step": 1}


def test_zero_optimiser_steps_is_never_a_success(tmp_path, fmnist_root, monkeypatch):  # noqa: F811
    """Even if the pre-check is passed (e.g. a sampler that yields less than its length), an epoch without an
    optimiser step raises and the run ends FAILED."""
    cfg = _cfg(tmp_path, fmnist_root)
    monkeypatch.setattr(T, "trainable_batches", lambda loader: 1)
    real_wrap = T.Progress.wrap
    monkeypatch.setattr(T.Progress, "wrap", lambda self, loader, epoch: (b for b in real_wrap(self, loader, epoch)
                                                                         if False))
    with pytest.raises(TrainingError, match="epoch 1: no optimiser step"):
        T.run(from_dict(cfg))
    assert _runs(cfg) == [("FAILED", "TrainingError: epoch 1: no optimiser step: every batch had fewer than 2 "
                                      "samples (data.batch_size=64, 128 training images in this process); use more "
                                      "training images and data.batch_size >= 2")]
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("schemes, message", [
    (("fp", "fp"), "the training loss became nan at epoch 1, batch 2 (step 1); lower optim.lr (now 1e+30)"),
    (("ls-1", "ls-1"), "training diverged at epoch 1, batch 2 (step 1): ls-1: row 0 of the input holds NaN"),
])
def test_non_finite_loss_stops_training(tmp_path, fmnist_root, schemes, message):  # noqa: F811
    cfg = _cfg(tmp_path, fmnist_root, optim={"name": "sgd", "lr": 1e30, "momentum": 0.0},
               model={"x_quant": schemes[0], "w_quant": schemes[1]}, schedule={"name": "constant"})
    with pytest.raises(TrainingError) as err:
        T.run(from_dict(cfg))
    assert str(err.value).startswith(message), str(err.value)
    ((status, error),) = _runs(cfg)
    assert status == "FAILED" and error.startswith(f"TrainingError: {message}")
    assert _files(tmp_path) == []                     # no checkpoint, metrics, config.yaml or temp file
    assert run_command("train", T.main, ["--config", str(_write(tmp_path, cfg))]) == CODE


def _write(tmp_path, cfg):
    import yaml

    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_failure_after_the_first_epoch_keeps_the_checkpoint_and_ends_the_run_failed(tmp_path, fmnist_root,
                                                                                       monkeypatch):  # noqa: F811
    cfg = _cfg(tmp_path, fmnist_root, epochs=2)
    calls = []

    def evaluate(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real(*args, **kwargs)

    real = T.evaluate
    monkeypatch.setattr(T, "evaluate", evaluate)
    with pytest.raises(OSError):
        T.run(from_dict(cfg))
    assert _runs(cfg) == [("FAILED", "OSError: [Errno 28] No space left on device")]
    assert _files(tmp_path) == ["run/config.yaml", "run/resume.pt"]   # resumable; no metrics.json, no temp file
    assert ckpt_io.load(tmp_path / "run" / "resume.pt")["epoch"] == 1


def test_interrupt_during_a_save_ends_the_run_killed_without_temp_files(tmp_path, fmnist_root,
                                                                          monkeypatch):  # noqa: F811
    cfg = _cfg(tmp_path, fmnist_root)

    def interrupted_save(obj, f):
        f.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(ckpt_io.torch, "save", interrupted_save)
    with pytest.raises(KeyboardInterrupt):
        T.run(from_dict(cfg))
    assert _runs(cfg) == [("KILLED", "KeyboardInterrupt")]
    assert _files(tmp_path) == []


def test_stale_temp_files_are_removed_when_the_next_run_starts(tmp_path, fmnist_root):  # noqa: F811
    """`kill -9` during a save leaves ``.checkpoint.pt.*.tmp``; the next start of that output removes it, even if
    that run then fails."""
    cfg = _cfg(tmp_path, fmnist_root, data={"train_subset": 1})
    out = tmp_path / "run"
    out.mkdir()
    (out / ".checkpoint.pt.k9x2_.tmp").write_bytes(b"half a checkpoint")
    with pytest.raises(TrainingError):
        T.run(from_dict(cfg), resume=True)
    assert list(out.iterdir()) == []


def test_progress_lines_when_not_on_a_terminal(tmp_path, fmnist_root, capsys):  # noqa: F811
    cfg = _cfg(tmp_path, fmnist_root, epochs=2, progress="auto", progress_every=1, tracking={"enabled": False})
    T.run(from_dict(cfg))
    out = capsys.readouterr().out.splitlines()
    batch_lines = [ln for ln in out if " batch " in ln]
    assert [ln.split(":")[0] for ln in batch_lines] == [f"epoch {e}/2 batch 1/2" for e in (1, 2)]
    assert all(" img/s " in ln and "ETA epoch " in ln and "top1 " in ln and "loss " in ln for ln in batch_lines)
    assert out[-1].startswith("epoch 2/2: train_loss") and "ETA" in next(ln for ln in out if ln.startswith("epoch 1/2:"))
