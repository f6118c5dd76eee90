"""torchrun with 2 gloo processes on CPU reproduces a 1-process run with the same global batch: 2 processes on one
node, and 2 nodes x 1 process (two torchrun launchers, --nnodes 2 --node-rank 0/1, rendezvous on 127.0.0.1).

Tolerance: the two runs differ only in floating-point summation order (BN statistics summed over ranks,
gradients averaged by all-reduce). Training amplifies that float32 noise (measured: 1e-5 after one SGD
step, 7e-5 after two, 4e-3 after eight; in float64 the two runs agree to 1e-6 after eight steps, so there is
no systematic difference). The test therefore runs two SGD steps (global batch 64) and requires every weight
to agree to 5e-4 and the test loss to 1e-4 relative. Adam is left out: it divides by the root of the squared
gradient, so on weights whose gradient is ~0 the rounding noise becomes a full-size step.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
import torch
import yaml

from lsqbq import checkpoint as ckpt_io
from lsqbq.config import from_dict
from lsqbq.distributed import SyncBatchNorm2d, convert_sync_bn
from lsqbq.train import run

from .conftest import tiny_config

# Two SGD steps of a global batch of 64 (see the tolerance above).
BASE = dict(epochs=1, model={"x_quant": "fp", "w_quant": "fp", "width": 8}, tracking={"enabled": False},
            optim={"name": "sgd", "lr": 0.05}, data={"train_subset": 128, "batch_size": 64, "augment": True})


def test_sync_bn_without_group_is_batchnorm():
    bn = torch.nn.Sequential(torch.nn.BatchNorm2d(3))
    torch.nn.init.uniform_(bn[0].weight)
    x = torch.randn(4, 3, 5, 5)
    ref = bn(x)
    sync = convert_sync_bn(bn)
    assert isinstance(sync[0], SyncBatchNorm2d)
    torch.testing.assert_close(sync(x), ref)


@pytest.mark.slow
def test_two_process_gloo_matches_one_process(tmp_path, fmnist_root):
    base = BASE
    single = tiny_config(tmp_path / "one", fmnist_root, **base)
    one = run(from_dict(single))

    double = tiny_config(tmp_path / "two", fmnist_root, **base)
    cfg_path = tmp_path / "two.yaml"
    cfg_path.write_text(yaml.safe_dump(double))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--master_port", "29533", "-m", "lsqbq.train", "--config", str(cfg_path)],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _assert_matches(tmp_path / "one", one, tmp_path / "two")


def _assert_matches(one_dir, one, two_dir):
    """The distributed run in two_dir equals the 1-process run in one_dir (metrics `one`) within the tolerance above."""
    two = json.loads((two_dir / "run" / "metrics.json").read_text())
    assert two["n_test"] == one["n_test"] == 256
    assert two["loss"] == pytest.approx(one["loss"], rel=1e-4)
    assert abs(two["top1"] - one["top1"]) <= 100 / 256 + 1e-9  # at most one test image may flip
    a = ckpt_io.load(one_dir / "run" / "checkpoint.pt")["model"]
    b = ckpt_io.load(two_dir / "run" / "checkpoint.pt")["model"]
    assert a.keys() == b.keys()
    for k in a:
        if a[k].is_floating_point():
            torch.testing.assert_close(b[k], a[k], atol=5e-4, rtol=0)
        else:
            assert torch.equal(a[k], b[k]), k


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_nodes_gloo_match_one_process(tmp_path, fmnist_root):
    """Two torchrun launchers as two nodes of one process each (static rendezvous, node ranks 0 and 1), all on the
    loopback interface: the same global batch and the same tolerance as the single-node test."""
    base = BASE
    one = run(from_dict(tiny_config(tmp_path / "one", fmnist_root, **base)))

    cfg_path = tmp_path / "nodes.yaml"
    cfg_path.write_text(yaml.safe_dump(tiny_config(tmp_path / "nodes", fmnist_root, **base)))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}
    port = str(_free_port())
    nodes = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
                               "--node-rank", str(rank), "--master-addr", "127.0.0.1", "--master-port", port,
                               "-m", "lsqbq.train", "--config", str(cfg_path)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
             for rank in (0, 1)]
    try:
        outs = [p.communicate(timeout=300)[0] for p in nodes]
    finally:
        for p in nodes:
            if p.poll() is None:
                p.kill()
    for p, out in zip(nodes, outs):
        assert p.returncode == 0, out[-3000:]
    _assert_matches(tmp_path / "one", one, tmp_path / "nodes")


def test_nccl_on_gpus_gloo_on_cpus(monkeypatch):
    """init() joins the process group with NCCL when the run uses CUDA, gloo otherwise."""
    import torch.distributed as dist

    from lsqbq import distributed as D

    chosen = []
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda backend: chosen.append(backend))
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: None)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert D.init(use_cuda=True) == D.DistInfo(rank=1, world=2, local_rank=0)
    assert D.init(use_cuda=False).rank == 1
    assert chosen == ["nccl", "gloo"]
