"""``lsqbq bench peers`` on a tiny shape: the CSV holds every engine with a positive time and ratio, OpenVINO's
BinaryConvolution graph of the binary ResNet-18 gives lsqbq's logits (where openvino is installed), a missing peer
is skipped with the extra that installs it named, and the run is recorded in a temporary MLflow store.

OpenVINO and ONNX Runtime run in child processes only: their thread pools stay out of the test worker, whose later
tests fork and start threads of their own."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from mlflow.tracking import MlflowClient

from lsqbq.bench import harness, peers, peers_profile
from lsqbq.kernels import ops as kernel_ops

SIZE = 32


def _importable(name: str) -> bool:
    return importlib.util.find_spec(name) is not None  # found, not imported


def _run_python(code: str, **env: str) -> subprocess.CompletedProcess:
    """``code`` in a fresh interpreter; fails the test with its output unless it exits 0."""
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=600, env={**os.environ, **env})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def smoke(peers_smoke):
    """The session's one ``--smoke`` run (tests/conftest.py): its output folder, CSV and MLflow store."""
    out, uri = peers_smoke
    return out, pd.read_csv(out / "peers.csv", dtype={"git_commit": str}), uri


def test_every_row_has_the_columns_a_positive_time_and_ratio(smoke):
    out, df, _ = smoke
    assert set(peers.COLUMNS) | set(harness.PROVENANCE) <= set(df.columns)
    assert {"torch fp32", "lsqbq binary"} <= set(df.engine)
    assert (df.seconds > 0).all() and (df.ratio_vs_torch_fp32 > 0).all()
    base = df[df.engine == peers.BASELINE]
    assert len(base) == 1 and base.ratio_vs_torch_fp32.iloc[0] == pytest.approx(1.0)
    # the ratio is the baseline's time over the row's, of the same batch and threads
    np.testing.assert_allclose(df.ratio_vs_torch_fp32, base.seconds.iloc[0] / df.seconds, rtol=1e-5)
    assert (df["size"] == SIZE).all() and (df.batch == 1).all() and (df.threads == 1).all()
    assert df.git_commit.notna().all() and df.drift.notna().all()
    md = (out / "peers.md").read_text()
    assert "| engine" in md and "larq" in md  # the table, and LCE among the skipped with its reason
    head = (out / "peers_headline.md").read_text().splitlines()
    rows = [line for line in head if line.startswith("|")]
    assert "batch 1, 1 thread" in head[0] and len(rows) == 2 + len(df)  # one row per engine of the one group
    lsqbq_row = next(line for line in head if line.startswith("| lsqbq binary "))
    r = df[df.engine == "lsqbq binary"].iloc[0]
    assert f"{r.ms:.2f} ms ({r.ratio_vs_torch_fp32:.2f}x)" in lsqbq_row
    rivals = df[~df.engine.str.startswith("lsqbq") & (df.engine != peers.BASELINE)]
    verdicts = [line for line in head if line.startswith("- lsqbq binary against")]
    if len(rivals):  # the fastest other engine's time over lsqbq's, named
        best = rivals.loc[rivals.seconds.idxmin()]
        assert f"batch 1, 1 thread: {best.seconds / r.seconds:.2f}x ({best.engine})" in verdicts[0]
    else:
        assert not verdicts


@pytest.mark.skipif(not _importable("openvino"), reason="openvino not installed (pip install 'lsqbq[peers]')")
def test_openvino_binary_row_agrees_with_lsqbq(smoke):
    _, df, _ = smoke
    row = df[df.engine == "openvino binary"].iloc[0]
    assert bool(row.agrees) and row.reference == "lsqbq binary"
    assert 0 <= row.max_abs_diff < 1e-3
    assert {"openvino fp32", "openvino int8"} <= set(df.engine)


def test_the_run_is_recorded_with_both_files(smoke):
    out, _, uri = smoke
    c = MlflowClient(uri)
    exp = c.get_experiment_by_name("lsqbq-bench-peers")
    runs = c.search_runs([exp.experiment_id], filter_string=f"params.out = '{out}'")
    assert len(runs) == 1 and runs[0].info.run_name == "bench_peers" and runs[0].info.status == "FINISHED"
    assert {a.path for a in c.list_artifacts(runs[0].info.run_id)} == {"peers.csv", "peers.md", "peers_headline.md",
                                                                          "peers_profile.md"}
    assert "max_drift" in runs[0].data.metrics


def test_a_missing_peer_is_skipped_naming_the_extra(tmp_path, monkeypatch, capsys):
    for module in ("openvino", "onnxruntime", "onnx", "nncf"):
        monkeypatch.setitem(sys.modules, module, None)  # import raises ImportError, as when not installed
    monkeypatch.setenv("LSQBQ_TRACKING", "0")
    assert peers.main(["--smoke", "--out", str(tmp_path)]) == 0
    df = pd.read_csv(tmp_path / "peers.csv")
    assert set(df.engine) == {"torch fp32", "lsqbq binary", "lsqbq binary, frozen", "lsqbq binary, int8 float parts",
                              "lsqbq binary, int8 float parts, frozen"}
    md = (tmp_path / "peers.md").read_text()
    assert "openvino binary/fp32/bf16/int8: openvino is not installed (pip install 'lsqbq[peers]')" in md
    assert "onnxruntime fp32/int8: " in md and peers.EXTRA in md
    profile = (tmp_path / "peers_profile.md").read_text()  # lsqbq's side alone, and why
    assert "openvino is not installed" in profile and "| binary layers " in profile


def _profile_table(md: str) -> pd.DataFrame:
    """The by-part table of ``peers_profile.md``."""
    from io import StringIO

    lines = [line for line in md.split("\n\n")[3].splitlines() if not line.startswith("|:")]
    return pd.read_csv(StringIO("\n".join(lines)), sep="|", skipinitialspace=True).iloc[:, 1:-1] \
        .rename(columns=str.strip).set_index("part")


def test_the_profile_splits_one_inference_of_each_engine_by_part(smoke):
    out, df, _ = smoke
    md = (out / "peers_profile.md").read_text()
    table = _profile_table(md)
    table.index = table.index.str.strip()
    assert list(table.index) == [*peers_profile.PARTS, peers_profile.OUTSIDE, peers_profile.PROFILED,
                                 peers_profile.UNPROFILED]
    ours = table["lsqbq ms"].astype(float)
    assert ours["binary layers"] > 0 and ours["fp32 convolutions"] > 0 and ours[peers_profile.UNPROFILED] > 0
    # the ops fit in the wall time of the inferences they were counted in, and with the time outside them add up to it
    assert ours[peers_profile.OUTSIDE] >= 0
    assert ours.iloc[:-2].sum() == pytest.approx(ours[peers_profile.PROFILED], abs=0.01)
    assert "| lsqbq::bitwise_conv2d " in md and str(df.git_commit.iloc[0])[:12] in md
    if _importable("openvino"):
        theirs = table["openvino ms"].astype(float)
        assert theirs["binary layers"] > 0 and "BinaryConvolution (" in md


def test_ops_fall_in_the_part_of_the_network_they_compute():
    assert peers_profile.torch_part("lsqbq::bitwise_conv2d") == "binary layers"
    assert peers_profile.torch_part("aten::mkldnn_convolution") == "fp32 convolutions"
    assert peers_profile.torch_part("aten::empty") == "other"
    # OpenVINO's ReduceMean is the per-sample ls-1 fit (B, 1, 1, 1) or the global average pool (B, C)
    assert peers_profile.openvino_part("ReduceMean", 4) == "binary layers"
    assert peers_profile.openvino_part("ReduceMean", 2) == "global average pool"
    assert peers_profile.openvino_part("BinaryConvolution") == "binary layers"
    assert peers_profile.openvino_part("Reorder") == "other"


def test_torch_op_times_count_each_op_once_per_inference():
    """16 binary convolutions and 4 float ones (stem, three shortcuts) per inference of the binary ResNet-18: all
    four on the engine's direct convolution (the stem with its max-pool fused) where the AVX-512 back end runs,
    else on torch's."""
    from lsqbq.bench.models import SHAPES, resnet18_network
    from lsqbq.kernels import to_bitwise

    fast = to_bitwise(resnet18_network(SHAPES["imagenet"], "ls-1", "ls-1"))
    x = torch.randn(1, 3, SIZE, SIZE)
    with torch.inference_mode():
        ops, wall = peers_profile.torch_op_times(lambda: fast(x), calls=3, warmup=1)
    ops = ops.set_index("op")
    assert ops.ms.sum() <= wall  # self times of the ops within the calls' wall time
    assert ops.loc["lsqbq::bitwise_conv2d", "calls"] == 16
    calls = {op: ops.loc[op, "calls"] if op in ops.index else 0
             for op in ("lsqbq::f32_direct_conv2d", "aten::_convolution", "lsqbq::max_pool2d_nhwc")}
    direct = calls["lsqbq::f32_direct_conv2d"]
    assert calls["aten::_convolution"] + direct == 4 and direct in (0, 4)
    assert (direct == 4) == (kernel_ops.cached_isa(None, "cpu") == kernel_ops.AVX512_ISA)
    assert not (direct and calls["lsqbq::max_pool2d_nhwc"])  # the stem's pool fused
    assert set(ops.loc[[o for o in ops.index if "conv" in o and "bitwise" not in o], "part"]) == {"fp32 convolutions"}
    assert (ops.ms > 0).all() and set(ops.part) <= set(peers_profile.PARTS)


def test_plus_one_padding_minus_the_border_excess_is_zero_padding():
    """The correction the OpenVINO graph subtracts, against zero-padded convolution by brute force."""
    from lsqbq.bench.peers_openvino import _pad_excess

    torch.manual_seed(0)
    x = torch.randn(2, 8, 7, 6).sign()
    c = torch.randn(5, 8, 3, 3).sign()
    for stride in (1, 2):
        conv = torch.nn.Conv2d(8, 5, 3, stride=stride, padding=1)
        plus = F.conv2d(F.pad(x, (1, 1, 1, 1), value=1.0), c, stride=stride)
        zero = F.conv2d(x, c, stride=stride, padding=1)
        assert torch.equal(plus - torch.from_numpy(_pad_excess(c, (7, 6), conv)), zero)


@pytest.mark.skipif(not _importable("openvino"), reason="openvino not installed (pip install 'lsqbq[peers]')")
@pytest.mark.parametrize("bn", ["fresh", "trained-like"])
def test_openvino_graph_equals_to_bitwise_at_batch_2(bn):
    """Fresh BatchNorms give exact zeros in the first binary inputs (sign(0) = +1 must hold there too)."""
    _run_python(f"""
        import numpy as np, torch
        from lsqbq.bench import peers, peers_openvino as pov
        from lsqbq.bench.models import SHAPES, resnet18_network
        from lsqbq.kernels import to_bitwise

        torch.manual_seed(0)
        sim = resnet18_network(SHAPES["imagenet"], "ls-1", "ls-1")
        if {bn!r} == "trained-like":
            peers.trained_like_batchnorm(sim)
        x = torch.randn(2, 3, {SIZE}, {SIZE})
        with torch.inference_mode():
            ours = to_bitwise(sim)(x).numpy()
        call, output = pov.infer_fn(pov.compile_model(pov.binary_resnet_model(sim, 2, {SIZE}), 2, 1), x.numpy())
        call()
        np.testing.assert_allclose(output(), ours, rtol=1e-4, atol=1e-4 * np.abs(ours).max())
    """)


@pytest.mark.skipif(not _importable("openvino"), reason="openvino not installed (pip install 'lsqbq[peers]')")
def test_only_the_papers_binary_topology_is_built():
    _run_python(f"""
        import pytest
        from lsqbq.bench import peers_openvino as pov
        from lsqbq.bench.models import SHAPES, resnet18_network
        from lsqbq.errors import ConfigError

        with pytest.raises(ConfigError, match="ls-2/ls-1"):
            pov.binary_resnet_model(resnet18_network(SHAPES["imagenet"], "ls-2", "ls-1"), 1, {SIZE})
        with pytest.raises(ConfigError, match="xnor-block"):
            pov.binary_resnet_model(resnet18_network(SHAPES["imagenet"]), 1, {SIZE})
    """)


def test_an_engine_slower_with_more_threads_is_named_as_suspect():
    df = pd.DataFrame(dict(engine=[peers.BASELINE] * 2 + ["openvino binary"] * 4 + ["lsqbq binary"] * 2,
                           batch=[1, 1, 1, 1, 16, 16, 1, 1], threads=[1, 2, 1, 2, 1, 2, 1, 2],
                           seconds=[0.044, 0.026, 0.0055, 0.0074, 0.10, 0.06, 0.007, 0.004], drift=[0.0] * 8))
    said = peers.slower_with_threads(df)
    assert said.startswith("Slower with more threads") and "openvino binary at batch 1 (1.35x)" in said
    assert "batch 16" not in said and "lsqbq" not in said and peers.BASELINE not in said
    head = peers.headline(df.assign(precision="x", ms=df.seconds * 1e3, ratio_vs_torch_fp32=1.0))
    assert f"\n- {said}\n" in head and "\n\n- " + said not in head  # one more item of the list, no own paragraph
    assert peers.slower_with_threads(df[df.engine != "openvino binary"]) == ""


def test_drift_beyond_the_limit_says_rerun():
    assert "drifted: rerun on a quiet machine" in peers.drift_verdict(pd.DataFrame({"drift": [0.02, -0.15]}))
    assert "no drift" in peers.drift_verdict(pd.DataFrame({"drift": [0.02, -0.05]}))
    base = dict(engine=[peers.BASELINE] * 4 + ["lsqbq binary"], batch=[1, 1, 16, 16, 1], drift=[0.0] * 5)
    ok = pd.DataFrame(base | dict(threads=[1, 2, 1, 2, 2], seconds=[0.023, 0.014, 0.29, 0.16, 0.5]))
    assert "no drift" in peers.drift_verdict(ok)  # another engine slower with 2 threads is its own matter
    bad = pd.DataFrame(base | dict(threads=[1, 2, 1, 2, 1], seconds=[0.023, 0.208, 0.29, 0.16, 0.004]))
    assert "threads interfered: rerun on two idle cores" in peers.drift_verdict(bad) and "9.0x" in \
        peers.drift_verdict(bad)
