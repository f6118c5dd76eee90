"""lsqbq.tables: mean ± std arithmetic, provenance columns, paper numbers beside ours (fast unit tests)."""
import csv
import json
import math
import statistics
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lsqbq import tables as T

PAPER = Path(T.DEFAULT_PAPER)


def _write_run(root: Path, model, x, w, seed, top1, top5, stage="train"):
    d = root / stage / "fashion-mnist" / model / f"{x}_{w}" / f"s{seed}"
    d.mkdir(parents=True)
    m = {"top1": top1, "top5": top5, "epochs": 3, "run_id": f"run{model}{x}{w}{seed}", "data_hash": "d" * 64,
         "commit": "c0ffee" * 6, "config_hash": f"cfg{x}{w}{seed}"}
    (d / "metrics.json").write_text(json.dumps(m))
    return d / "metrics.json"


@pytest.fixture
def runs_dir(tmp_path):
    acc = {("fp", "fp"): [91.0, 91.4, 90.9], ("ls-1", "ls-1"): [84.0, 85.0, 86.5], ("ls-2", "ls-1"): [88.1, 88.3, 88.2],
           ("gf-2", "ls-1"): [87.0, 87.5, 87.2], ("fp", "ls-T"): [90.0, 90.1, 90.2]}
    files = [_write_run(tmp_path / "results", "lenet5", x, w, s, a, a + 8)
             for (x, w), accs in acc.items() for s, a in enumerate(accs)]
    return tmp_path, files, acc


def test_mean_std_is_sample_std():
    vals = [84.0, 85.0, 86.5]
    m, s = T.mean_std(vals)
    assert m == pytest.approx(np.mean(vals)) and s == pytest.approx(np.std(vals, ddof=1))
    assert T.mean_std([70.0]) == (70.0, 0.0)
    assert all(math.isnan(v) for v in T.mean_std([]))
    assert T.fmt_mean_std(85.1666, 1.2583, 3) == "85.17 ± 1.26"
    assert T.fmt_mean_std(85.1666, 0.0, 1) == "85.17"


def test_bits_order_follows_the_paper():
    assert sorted(["32", "2", "T", "1", "3"], key=T.bits_order) == ["1", "T", "2", "3", "32"]


def test_qat_table_mean_std_provenance_and_paper(runs_dir):
    root, files, acc = runs_dir
    rows = T.qat_table(T.load_runs(files), list(csv.DictReader(open(PAPER))))
    # row order as in the paper: (1,1), (2,1) gf before ls, (32,T), (32,32)
    assert [(r["x_quant"], r["w_quant"]) for r in rows] == [
        ("ls-1", "ls-1"), ("gf-2", "ls-1"), ("ls-2", "ls-1"), ("fp", "ls-T"), ("fp", "fp")]
    by = {(r["x_quant"], r["w_quant"]): r for r in rows}
    for key, accs in acc.items():
        r = by[key]
        assert r["n_seeds"] == 3 and r["seeds"] == "0;1;2"
        assert r["top1_mean"] == pytest.approx(statistics.fmean(accs))
        assert r["top1_std"] == pytest.approx(statistics.stdev(accs))
        assert r["top5_mean"] == pytest.approx(statistics.fmean(accs) + 8)
        for col in T.PROVENANCE:  # one value per seed (commit deduplicated)
            assert r[col], col
        assert r["run_id"].split(";") == [f"runlenet5{key[0]}{key[1]}{s}" for s in range(3)]
        assert r["commit"] == "c0ffee" * 6
    ls2 = by[("ls-2", "ls-1")]
    assert (ls2["v1_imagenet_top1"], ls2["readme_imagenet_top1"], ls2["readme_cifar100_top1"]) == (60.4, 63.4, 74.4)
    assert ls2["diff_readme_imagenet_top1"] == pytest.approx(88.2 - 63.4)
    assert ls2["v1_imagenet_source"] == "V1 Table 2"
    assert by[("fp", "ls-T")]["v1_imagenet_top1"] == 64.4 and math.isnan(by[("fp", "ls-T")]["readme_imagenet_top1"])
    assert by[("fp", "fp")]["readme_imagenet_top1"] == 69.8


def test_main_writes_tables_with_provenance(runs_dir, tmp_path):
    root, files, _ = runs_dir
    kernels = tmp_path / "kernels.csv"
    rows = []
    for layer, scale in (("64@56x56", 1.0), ("128@28x28", 0.5)):
        for scheme, ms in (("1x1", 0.1), ("2x1", 0.2), ("Tx1", 0.15), ("fp32", 1.0), ("int8", 0.5)):
            for kind, threads, factor in (("conv", 1, 1.0), ("gemm", 1, 0.5), ("conv", 4, 0.3)):
                rows.append({"kind": kind, "layer": layer, "batch": 1, "threads": threads, "scheme": scheme,
                             "ms": ms * scale * factor})
    rows.append({"kind": "conv", "layer": "256@14x14", "batch": 1, "threads": 1, "scheme": "1x1", "ms": 9.0})
    pd.DataFrame(rows).to_csv(kernels, index=False)
    out = tmp_path / "tables"
    assert T.main(["--dataset", "fashion-mnist", "--out", str(out), "--train", *map(str, files),
                   "--kernels", str(kernels)]) == 0
    qat = pd.read_csv(out / "qat.csv")
    for col in ("commit", "config_hash", "data_hash", "run_id", "top1_mean", "top1_std", "v1_imagenet_top1",
                "diff_v1_imagenet_top1", "readme_cifar100_top1"):
        assert col in qat.columns
    md = (out / "qat.md").read_text()
    assert "| lenet5 | 1 | 1 | ls-1 | ls-1 | 3 | 85.17 ± 1.26 |" in md
    per_run = pd.read_csv(out / "qat_runs.csv")
    assert len(per_run) == 15 and per_run["run_id"].notna().all()
    pareto = pd.read_csv(out / "pareto.csv")
    # conv kind, batch 1, 1 thread, summed over the layers every scheme was timed on (not 256@14x14)
    ls1 = pareto[(pareto.x_quant == "ls-1")].iloc[0]
    assert ls1["latency_ms"] == pytest.approx(0.15) and ls1["kernel"] == "1x1" and ls1["pareto"]  # fastest
    gf2 = pareto[(pareto.x_quant == "gf-2")].iloc[0]
    assert gf2["latency_ms"] == pytest.approx(0.3) and not gf2["pareto"]  # ls-2: same latency, more accurate
    assert pareto[(pareto.x_quant == "fp")]["latency_ms"].tolist() == pytest.approx([1.5, 1.5])
    assert (out / "pareto.png").stat().st_size > 0


def test_ptq_table(tmp_path):
    d = tmp_path / "lenet5"
    d.mkdir()
    for seed, shift in ((0, 0.0), (1, 1.0)):
        pd.DataFrame({"w_quant": ["fp", "gf-1", "ls-2"], "k_w": ["32", "1", "2"], "x_quant": "fp", "k_a": "32",
                      "top1": [90 + shift, 50 + shift, 80 + shift], "top5": [99, 90, 97], "run_id": f"r{seed}",
                      "commit": "c", "config_hash": "h", "data_hash": "d"}).to_csv(d / f"ptq_fp_fp_s{seed}.csv", index=False)
    rows = T.ptq_table([d / "ptq_fp_fp_s0.csv", d / "ptq_fp_fp_s1.csv"], list(csv.DictReader(open(PAPER))))
    by = {r["w_quant"]: r for r in rows}
    assert [r["w_quant"] for r in rows] == ["gf-1", "ls-2", "fp"]
    assert by["ls-2"]["top1_mean"] == 80.5 and by["ls-2"]["top1_std"] == pytest.approx(math.sqrt(0.5))
    assert by["ls-2"]["v1_imagenet_top1"] == 5.3 and by["gf-1"]["v1_imagenet_top1"] == 0.1
    assert by["ls-2"]["run_id"] == "r0;r1"


def test_paper_numbers_file():
    rows = list(csv.DictReader(open(PAPER)))
    sources = {r["source"] for r in rows}
    assert {"V1 Table 1", "V1 Table 2", "README ImageNet", "README CIFAR-100"} <= sources
    for r in rows:
        assert r["source"] and float(r["top1"]) > 0
    readme = {(r["x_quant"], r["w_quant"]): float(r["top1"]) for r in rows if r["source"] == "README ImageNet"}
    assert readme == {("ls-1", "ls-1"): 58.9, ("ls-T", "ls-1"): 62.0, ("gf-2", "ls-1"): 62.6, ("ls-2", "ls-1"): 63.4,
                      ("fp", "ls-1"): 66.1, ("fp", "fp"): 69.8}
    cifar = {(r["x_quant"], r["w_quant"]): float(r["top1"]) for r in rows if r["source"] == "README CIFAR-100"}
    assert cifar[("ls-2", "ls-1")] == 74.4 and cifar[("fp", "fp")] == 77.8 and len(cifar) == 6
    post = [r for r in rows if r["training"] == "post"]
    assert {r["w_quant"]: float(r["top1"]) for r in post} == {"gf-1": 0.1, "gf-2": 0.3, "gf-3": 1.4, "gf-4": 5.3,
                                                               "ls-2": 5.3}
