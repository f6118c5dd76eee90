"""``lsqbq bench peers --checkpoints`` on tiny checkpoints: every student (bitwise, frozen) and the teacher's engines
side by side per model, the ONNX exports compute the teacher's logits, students without a teacher are listed as
skipped, the run is recorded, and nothing to time (or an input size) is refused before any timing.

The benchmark runs in a child process: OpenVINO's and ONNX Runtime's thread pools stay out of the test worker."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from lsqbq import checkpoint as ckpt_io
from lsqbq.bench import peers, peers_checkpoints
from lsqbq.config import from_dict, model_options, to_dict
from lsqbq.errors import CheckpointNotFoundError, ConfigError


def _save(root, x_quant: str, w_quant: str, seed: int):
    cfg = from_dict({"model": {"name": "resnet_small", "width": 4, "layers": [1], "x_quant": x_quant,
                               "w_quant": w_quant}})
    options = model_options(cfg, 10, 1)
    net = ckpt_io.build_model(cfg.model.name, options)
    pair = f"{x_quant}_{w_quant}"
    path = root / "resnet_small" / pair / f"s{seed}" / "checkpoint.pt"
    path.parent.mkdir(parents=True)
    ckpt_io.save_atomic({"format": ckpt_io.FORMAT, "config": to_dict(cfg), "model_options": options,
                         "model": net.state_dict(), "epoch": 1}, path)
    return path


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    """Teacher and two students of seed 0, a student of seed 1 without its teacher; one ``--smoke`` run."""
    tmp = tmp_path_factory.mktemp("peers-checkpoints")
    root = tmp / "checkpoints"
    paths = {pair: _save(root, *pair.split("_"), 0) for pair in ("fp_fp", "ls-1_ls-1", "ls-2_ls-1")}
    paths["orphan"] = _save(root, "ls-T", "ls-1", 1)
    out, uri = tmp / "out", f"sqlite:///{tmp}/mlflow.db"
    env = {k: v for k, v in os.environ.items() if k != "LSQBQ_TRACKING"} | {"MLFLOW_TRACKING_URI": uri}
    proc = subprocess.run([sys.executable, "-m", "lsqbq.cli", "bench", "peers", "--checkpoints", str(root),
                           "--seeds", "0,1", "--smoke", "--out", str(out)], capture_output=True, text=True,
                          timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, pd.read_csv(out / "peers_checkpoints.csv", dtype={"git_commit": str}), uri, paths


def test_every_student_and_the_teacher_are_timed_side_by_side(bench):
    out, df, _, paths = bench
    assert set(peers_checkpoints.CHECKPOINT_COLUMNS) <= set(df.columns)
    engines = set(df.engine)
    assert {"torch fp32", "lsqbq ls-1/ls-1, frozen", "lsqbq ls-2/ls-1, frozen"} <= engines
    assert not any("ls-T" in e for e in engines)  # its teacher (seed 1) is missing
    assert (df.model == "resnet_small").all() and (df.seed == 0).all() and (df.input_shape == "1x28x28").all()
    assert (df.seconds > 0).all()
    base = df[df.engine == peers.BASELINE].seconds.iloc[0]
    np.testing.assert_allclose(df.ratio_vs_torch_fp32, base / df.seconds, rtol=1e-5)
    # each lsqbq row names the student it ran, every other row the teacher
    by_engine = dict(zip(df.engine, df.checkpoint))
    assert by_engine["lsqbq ls-2/ls-1, frozen"] == str(paths["ls-2_ls-1"])
    assert {by_engine[e] for e in engines if not e.startswith("lsqbq")} == {str(paths["fp_fp"])}
    assert (df[df.engine.str.startswith("lsqbq")].method.str.endswith("activation scales")).all()
    assert df.git_commit.notna().all() and df.drift.notna().all()


@pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None, reason="onnxruntime not installed")
def test_the_peer_engines_run_the_teacher(bench):
    _, df, _, _ = bench
    fp32 = df[df.engine.isin(["onnxruntime fp32", "openvino fp32"])]
    assert len(fp32) >= 1 and (fp32.reference == peers.BASELINE).all()
    assert (fp32.max_abs_diff < 1e-3).all()  # the same network as the teacher in torch, to float rounding


def test_the_report_has_a_table_per_model_and_lists_the_skipped(bench):
    out, df, uri, _ = bench
    md = (out / "peers_checkpoints.md").read_text()
    assert "## resnet_small, seed 0 (input 1x28x28)" in md
    assert "- resnet_small ls-T/ls-1 s1: no fp32 teacher of its seed" in md
    assert "| lsqbq ls-1/ls-1, frozen" in md and str(df.git_commit.iloc[0])[:12] in md
    c = MlflowClient(uri)
    runs = c.search_runs([c.get_experiment_by_name("lsqbq-bench-peers").experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert {a.path for a in c.list_artifacts(runs[0].info.run_id)} == {"peers_checkpoints.csv",
                                                                          "peers_checkpoints.md"}
    assert "max_drift" in runs[0].data.metrics


def test_nothing_to_time_and_a_size_are_refused_before_timing(tmp_path, monkeypatch):
    monkeypatch.setenv("LSQBQ_TRACKING", "0")
    _save(tmp_path / "ck", "ls-1", "ls-1", 0)  # a student without its teacher
    with pytest.raises(CheckpointNotFoundError, match=r"no quantized checkpoint of seed\(s\) 0 with its fp32 "
                                                      f"teacher under {tmp_path / 'ck'}"):
        peers.main(["--checkpoints", str(tmp_path / "ck"), "--out", str(tmp_path / "out")])
    with pytest.raises(ConfigError, match="--size"):
        peers.main(["--checkpoints", str(tmp_path / "ck"), "--size", "64", "--out", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()
