"""The benchmark harness: every benchmark, run on tiny shapes (``--smoke``), writes a CSV whose every row names the
commit, the kernels' ISA path and the load, and records exactly one MLflow run holding that CSV; outputs are
written atomically, and a bad back-end choice fails before anything is written, naming the switch."""
from __future__ import annotations

import math
import os
import subprocess
from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from lsqbq import _native, cli, kernels
from lsqbq.bench import BENCHMARKS, harness, machine

PROJECT = Path(__file__).resolve().parents[2]
CSV = {"quantizers": "quantizers.csv", "kernels": "kernels.csv", "models": "models.csv", "training": "training.csv",
       "peers": "peers.csv"}
EXTRA = {"training": ["--config", str(PROJECT / "config" / "train" / "fmnist_resnet.yaml")]}


@pytest.fixture(autouse=True)
def _tracking_on(monkeypatch):
    monkeypatch.delenv("LSQBQ_TRACKING", raising=False)


def _head() -> tuple[str, bool]:
    """The commit and dirty flag of the checkout, straight from git (results/ excluded, as the runs do)."""
    def git(*a):
        return subprocess.run(["git", *a], cwd=PROJECT, capture_output=True, text=True, check=True).stdout.strip()

    status = git("status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)results")
    return git("rev-parse", "HEAD"), bool(status)


def _runs_of(benchmark: str, out: Path, uri: str):
    c = MlflowClient(uri)
    exp = c.get_experiment_by_name(f"lsqbq-bench-{benchmark}")
    if exp is None:
        return c, []
    return c, c.search_runs([exp.experiment_id], filter_string=f"params.out = '{out}'")


def test_every_benchmark_has_an_experiment_of_its_own():
    assert [harness.experiment_name(b) for b in BENCHMARKS] == [
        "lsqbq-bench-quantizers", "lsqbq-bench-kernels", "lsqbq-bench-models", "lsqbq-bench-training",
        "lsqbq-bench-peers"]


@pytest.mark.parametrize("benchmark", BENCHMARKS)
def test_smoke_run_writes_provenance_on_every_row_and_one_run(tmp_path, benchmark, request):
    if benchmark == "peers":  # the session's run (tests/conftest.py): OpenVINO and ONNX Runtime in a child process
        out, uri = request.getfixturevalue("peers_smoke")
    else:
        out, uri = tmp_path / "out", os.environ["MLFLOW_TRACKING_URI"]
        assert cli.main(["bench", benchmark, "--smoke", "--out", str(out), *EXTRA.get(benchmark, [])]) == 0
    df = pd.read_csv(out / CSV[benchmark], dtype={"git_commit": str})
    commit, dirty = _head()
    for extra in sorted(out.glob("*.csv")):  # every CSV a benchmark writes says which code it timed
        assert "git_commit" in pd.read_csv(extra, nrows=0).columns, extra.name
    assert len(df) > 0
    assert (df["git_commit"] == commit).all() and (df["git_dirty"] == dirty).all()
    assert (df["isa"] == kernels.isa_path()).all() and (df["kernels"] == kernels.resolve_backend()).all()
    for col in ("load_before", "load_after", "steal_pct"):
        assert df[col].notna().all() and (df[col] >= 0).all()
    assert (df["steal_pct"] <= 100).all()
    if _native.active():  # the memory probe needs the compiled library (NaN without it)
        assert ((df["mem_ns_before"] > 0) & (df["mem_ns_after"] > 0)).all()
    assert (df["cpu"].astype(str).str.len() > 0).all() and df["torch"].notna().all()

    c, runs = _runs_of(benchmark, out, uri)
    assert len(runs) == 1, f"{len(runs)} runs of lsqbq-bench-{benchmark} for {out}"
    run = runs[0]
    assert run.info.status == "FINISHED" and run.info.run_name == f"bench_{benchmark}"
    assert run.data.params["isa"] == kernels.isa_path() and run.data.params["smoke"] == "true"
    assert run.data.tags["git_commit"] == commit and run.data.tags["lsqbq.isa"] == kernels.isa_path()
    assert set(harness.CONDITIONS) <= set(run.data.metrics)
    artifacts = {a.path for a in c.list_artifacts(run.info.run_id)}
    written = {p.name for p in out.iterdir()}
    assert CSV[benchmark] in artifacts and artifacts == written  # every file written is in the run, and only those
    got = Path(c.download_artifacts(run.info.run_id, CSV[benchmark], str(tmp_path / "dl")))
    assert got.read_bytes() == (out / CSV[benchmark]).read_bytes()
    assert not list(out.glob(".*.tmp"))  # atomic writes leave no temporary file


def test_table_adds_machine_and_provenance_without_overwriting(tmp_path):
    run = harness.BenchRun("unit", tmp_path / "o", options={"quick": False})
    df = run.table([{"threads": 1, "x": 1.0}, {"threads": 2, "x": 2.0}])
    assert list(df["threads"]) == [1, 2]  # a column the rows have is kept
    assert set(harness.PROVENANCE) <= set(df.columns) and df["git_commit"].nunique() == 1
    assert df["load_after"].iloc[0] == run.provenance()["load_after"]  # measured once, after the timings
    assert not (tmp_path / "o").exists()  # nothing written before the first write
    assert run.write_csv("t.csv", df).read_text() == df.to_csv(index=False)
    assert run.files == [tmp_path / "o" / "t.csv"]


def test_thread_counts():
    assert harness.thread_counts([3, 1], single=False) == [3, 1]
    assert harness.thread_counts(None, single=True) == [1]


def test_provenance_line_names_commit_isa_and_load():
    df = pd.DataFrame([{"git_commit": "0123456789abcdef", "git_dirty": True, "kernels": "portable",
                        "isa": "portable-popcnt", "load_before": 0.5, "load_after": float("nan")}])
    assert harness.provenance_line(df) == ("Commit `0123456789ab` with local changes; kernels `portable` "
                                           "(ISA path `portable-popcnt`); load average 0.50 before, n/a after the run.")
    assert harness.provenance_line(df.drop(columns="git_commit")) == ""


def test_provenance_line_gives_the_steal_share_where_recorded():
    df = pd.DataFrame([{"git_commit": "0123456789abcdef", "git_dirty": False, "kernels": "avx512",
                        "isa": "avx512-vpopcntdq", "load_before": 1.0, "load_after": 1.25, "steal_pct": 12.345}])
    assert harness.provenance_line(df).endswith("load average 1.00 before, 1.25 after the run; the host took 12.3 % "
                                                "of the CPU time (steal) during it.")


def test_provenance_line_gives_the_memory_probe_where_recorded():
    row = {"git_commit": "0123456789abcdef", "git_dirty": False, "kernels": "avx512", "isa": "avx512-vpopcntdq",
           "load_before": 1.0, "load_after": 1.25, "steal_pct": 0.0}
    line = harness.provenance_line(pd.DataFrame([{**row, "mem_ns_before": 31.4, "mem_ns_after": 148.6}]))
    assert line.endswith("(steal) during it; a dependent random load over 16 MB took 31 ns before and 149 ns after it "
                         "(longer: other tenants held more of the shared cache).")
    nan = float("nan")  # not recorded (no compiled library, or a CSV from before the probe): no clause
    assert "random load" not in harness.provenance_line(pd.DataFrame([{**row, "mem_ns_before": nan,
                                                                       "mem_ns_after": nan}]))
    assert "random load" not in harness.provenance_line(pd.DataFrame([row]))


@pytest.mark.skipif(not _native.active(), reason="the memory probe needs the compiled library")
def test_memory_probe_tells_a_cached_set_from_one_that_is_not():
    """Dependent loads over 32 KB (in L1 or L2 on any CPU) take far less than over 256 MB (beyond any last-level
    cache here: DRAM); a bad size is a clear error."""
    small = machine.memory_latency(32 << 10, 1 << 20)
    large = machine.memory_latency(256 << 20, 1 << 18)
    assert 0 < small < large / 3, (small, large)
    with pytest.raises(ValueError, match="bytes >= 128"):
        machine.memory_latency(64, 10)


def test_steal_percent_from_proc_stat_lines(tmp_path):
    stat = tmp_path / "stat"
    stat.write_text("cpu  100 0 50 800 10 0 0 40 0 0\ncpu0 50 0 25 400 5 0 0 20 0 0\n")
    before = machine.cpu_ticks(str(stat))
    assert before == (40, 1000)
    stat.write_text("cpu  160 0 70 900 10 0 0 100 0 0\n")
    after = machine.cpu_ticks(str(stat))
    assert machine.steal_percent(before, after) == pytest.approx(100 * 60 / 240)
    assert math.isnan(machine.steal_percent(after, before)) and math.isnan(machine.steal_percent(None, after))
    stat.write_text("cpu  1 2 3 4\n")  # no steal field: nothing is made up
    assert machine.cpu_ticks(str(stat)) is None
    assert machine.cpu_ticks(str(tmp_path / "missing")) is None


@pytest.mark.parametrize("env,arg,needle", [
    ({"LSQBQ_BACKEND": "nonsense"}, [], "LSQBQ_BACKEND='nonsense' is not a kernel back end"),
    ({}, ["--backend", "avx513"], "unknown kernel backend 'avx513'"),
])
def test_bad_backend_fails_before_anything_is_written(capsys, monkeypatch, tmp_path, env, arg, needle):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    out = tmp_path / "out"
    assert cli.main(["bench", "kernels", "--smoke", "--out", str(out), *arg]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("lsqbq bench: ") and needle in err and "LSQBQ_BACKEND" in err and "\n" not in err
    assert not out.exists()
    assert _runs_of("kernels", out, os.environ["MLFLOW_TRACKING_URI"])[1] == []


def test_switch_chooses_the_back_end_a_benchmark_times(monkeypatch, tmp_path):
    """``LSQBQ_BACKEND=portable`` on any machine: the kernel rows, the CSV's ISA column and the run say portable."""
    if "portable" not in kernels.available_backends():
        pytest.skip("no compiled back end")
    monkeypatch.setenv("LSQBQ_BACKEND", "portable")
    out = tmp_path / "out"
    assert cli.main(["bench", "kernels", "--smoke", "--out", str(out)]) == 0
    df = pd.read_csv(out / "kernels.csv")
    assert set(df["kernels"]) == {"portable"} and set(df["isa"]) == {kernels.isa_path("portable")}
    assert set(df.loc[df["impl"].str.startswith("binary"), "impl"]) == {"binary portable"}
    runs = _runs_of("kernels", out, os.environ["MLFLOW_TRACKING_URI"])[1]
    assert len(runs) == 1 and runs[0].data.params["kernels"] == "portable"


@pytest.mark.parametrize("backend, verdict", [("avx512", "no (29% of it)"), ("avx2", "yes"), ("portable", "")])
def test_headlines_judge_a_run_by_the_targets_of_its_back_end(backend, verdict):
    """The same measured ratio against the AVX-512 target (17x), the AVX2 one (4x) and none (portable): each
    table says met or not by the targets of the kernels that ran, in both the kernel and the model headline."""
    from lsqbq.bench import kernel_report, models

    key = f"conv_{kernel_report.ONE_BIT}_vs_fp32"
    table = kernel_report.headline_markdown({key: 5.0}, backend)
    row = next(line for line in table.splitlines() if line.startswith(f"| {kernel_report.LABELS[key]} "))
    assert [c.strip() for c in row.strip("|").split("|")][-1] == verdict
    network = f"resnet18 imagenet 224x224 {kernel_report.ONE_BIT} vs fp32 channels_last"
    row = models.headline_markdown({network: 3.5}, backend).splitlines()[2]
    assert [c.strip() for c in row.strip("|").split("|")][-1] == {"avx512": "no (50% of it)", "avx2": "yes",
                                                                 "portable": ""}[backend]


def test_batch16_thread_headline_is_the_slowest_binary_row():
    """The batch-16 thread speed-up of the kernel headline is the smallest 1 / 2-thread ratio over every binary
    layer, scheme and scale mode at batch 16: here a 2x1 row with stored scales (1.5x), below the 1-bit rows
    (2x) and ignoring fp32 rows and batch 1."""
    from lsqbq.bench import kernel_report

    rows = []
    for layer, scheme, mode, impl, batch, t1, t2 in [
            ("64@56x56", kernel_report.ONE_BIT, "fitted", "binary avx512", 16, 4.0, 2.0),
            ("128@28x28", kernel_report.ONE_BIT, "fitted", "binary avx512", 16, 3.0, 1.5),
            ("128@28x28", "2x1", "stored", "binary avx512", 16, 6.0, 4.0),
            ("128@28x28", "2x1", "fitted", "binary avx512", 1, 1.0, 1.0),
            ("128@28x28", "fp32", None, "fp32 F.conv2d NCHW", 16, 9.0, 9.0)]:
        rows += [dict(kind="conv", layer=layer, scheme=scheme, scale_mode=mode, impl=impl, batch=batch, threads=t,
                      seconds=sec) for t, sec in ((1, t1), (2, t2))]
    summary = kernel_report.summarise(pd.DataFrame(rows))
    assert summary["threads2_batch16_min"] == pytest.approx(1.5)


def test_split_table_bounds_each_layer_by_the_measured_peak():
    """The 1-bit layer's split gains its bound from the peak, recomputed here by hand: a layer of 1.2e8 binary
    MACs at 1.2e12 MAC/s takes at least 0.1 ms; with 0.05 ms of encode and 3 ms of fp32 that bounds it at 20x."""
    from lsqbq.bench import kernel_report

    one = kernel_report.ONE_BIT
    rows = [{"kind": "conv", "layer": "64@56x56", "batch": 1, "threads": 1, "scheme": "fp32", "scale_mode": None,
             "seconds": s, "binary_macs": None} for s in (3e-3, 4e-3)]  # the faster fp32 layout counts
    rows += [{"kind": "conv", "layer": "64@56x56", "batch": 1, "threads": 1, "scheme": one, "scale_mode": mode,
              "seconds": s, "binary_macs": 1.2e8} for mode, s in (("fitted", 2e-4), ("stored", 1e-4))]
    rows += [{"kind": "conv", "layer": "64@56x56", "batch": 1, "threads": 2, "scheme": "fp32", "scale_mode": None,
              "seconds": 1e-3, "binary_macs": None}]  # another thread count: not the reference
    split = [{"layer": "64@56x56", "layer_ms": 0.2, "encode_ms": 0.05, "conv_ms": 0.25, "other_ms": -0.1}]
    t = kernel_report.split_table(split, pd.DataFrame(rows), 1.2e12).iloc[0]
    assert math.isclose(t.peak_ms, 0.1) and math.isclose(t.conv_of_peak, 0.4)
    assert math.isclose(t.fp32_ms, 3.0) and math.isclose(t.bound_vs_fp32, 20.0)
    assert math.isclose(t.measured_vs_fp32, 15.0)  # the fitted row, not the stored one
    # no peak measured (a back end without one): the split as it was
    assert list(kernel_report.split_table(split, pd.DataFrame(rows), float("nan")).columns) == list(split[0])


@pytest.mark.parametrize("value, target, fraction, cells", [
    (9.996, 10.0, False, ("9.996x", ">= 10x", "no (99% of it)")),  # a miss never reads as its target
    (13.79, 17.0, False, ("13.79x", ">= 17x", "no (81% of it)")),
    (10.0, 10.0, False, ("10.00x", ">= 10x", "yes")),
    (0.8496, 0.85, True, ("84.96 %", ">= 85 %", "no (99% of it)")),
    (0.69, 0.85, True, ("69 %", ">= 85 %", "no (81% of it)")),
    (2.5, None, False, ("2.50x", "", "")),
])
def test_headline_cells_never_round_a_miss_up_to_its_target(value, target, fraction, cells):
    got = harness.headline_cells(value, target, fraction)
    assert (got["measured"], got["target"], got["met"]) == cells
