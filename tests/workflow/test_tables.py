"""lsqbq.tables: runs loaded from the identity in metrics.json, mean ± std and t intervals, provenance in the CSVs
only, the paper's numbers beside ours, deterministic outputs (fast unit tests)."""
import json
import math
import statistics
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lsqbq import tables as T
from lsqbq.errors import DataError, RunFileError
from lsqbq.tables import aggregate, render, runs as R

ROOT = Path(__file__).resolve().parents[2]
ACC = {("fp", "fp"): [91.0, 91.4, 90.9], ("ls-1", "ls-1"): [84.0, 85.0, 86.5], ("ls-2", "ls-1"): [88.1, 88.3, 88.2],
       ("gf-2", "ls-1"): [87.0, 87.5, 87.2], ("fp", "ls-T"): [90.0, 90.1, 90.2]}


def _metrics(model, x, w, seed, top1, **extra):
    return {"top1": top1, "top5": top1 + 8, "epochs": 3, "run_id": f"run{model}{x}{w}{seed}", "data_hash": "d" * 64,
            "commit": "c0ffee" * 6, "config_hash": f"cfg{x}{w}{seed}", "dataset": "fashion-mnist", "model": model,
            "x_quant": x, "w_quant": w, "seed": seed, "train_time_s": 100.0 + seed,
            "teacher_run_id": "" if x == w == "fp" else f"run{model}fpfp{seed}", **extra}


@pytest.fixture
def runs_dir(tmp_path):
    """metrics.json files in a flat folder: the identity must come from the files, not from their paths."""
    d = tmp_path / "flat"
    d.mkdir()
    files = []
    for i, ((x, w), accs) in enumerate(ACC.items()):
        for s, a in enumerate(accs):
            f = d / f"{i}-{s}.json"
            f.write_text(json.dumps(_metrics("lenet5", x, w, s, a)))
            files.append(f)
    return tmp_path, files


def test_mean_std_and_t_interval():
    vals = [84.0, 85.0, 86.5]
    m, s = T.mean_std(vals)
    assert m == pytest.approx(np.mean(vals)) and s == pytest.approx(np.std(vals, ddof=1))
    assert T.mean_std([70.0]) == (70.0, 0.0)
    assert all(math.isnan(v) for v in T.mean_std([]))
    mean, lo, hi, n = T.t_interval(vals)
    half = 4.302652729911275 * s / math.sqrt(3)  # t_{0.975, 2}
    assert (n, mean) == (3, pytest.approx(m)) and (lo, hi) == (pytest.approx(m - half), pytest.approx(m + half))
    assert math.isnan(T.t_interval([1.0])[1])


def test_formats():
    assert render.fmt_mean_std(85.1666, 1.2583, 3) == "85.17 ± 1.26"
    assert render.fmt_mean_std(85.1666, 0.0, 1) == "85.17"
    assert render.fmt_signed(-0.234) == "−0.23" and render.fmt_percent(0.0234) == "+2.3 %"
    assert render.fmt_interval(-0.62, 0.755) == "[−0.62, +0.76]" and render.fmt_interval(float("nan"), 1) == ""


def test_markdown_is_pandas_to_markdown():
    df = pd.DataFrame({"a": ["1", "T"], "b": ["x", None]})
    assert render.markdown_table(df) == df.fillna("").to_markdown(index=False, disable_numparse=True)
    doc = render.markdown_document("Title", ["a note", df])
    assert doc.startswith("# Title\n\na note\n\n|") and doc.endswith("|\n")


def test_runs_identity_comes_from_metrics_json(runs_dir):
    _, files = runs_dir
    df = T.load_runs(files)
    assert len(df) == 15 and set(df["model"]) == {"lenet5"} and set(df["seed"]) == {0, 1, 2}
    row = df[(df.x_quant == "ls-2") & (df.seed == 1)].iloc[0]
    assert (row.top1, row.run_id, row.teacher_run_id) == (88.3, "runlenet5ls-2ls-11", "runlenet5fpfp1")


def test_runs_without_identity_or_with_unknown_scheme_are_refused(tmp_path):
    f = tmp_path / "metrics.json"
    m = _metrics("lenet5", "ls-2", "ls-1", 0, 90.0)
    del m["seed"], m["model"]
    f.write_text(json.dumps(m))
    with pytest.raises(RunFileError, match=r"metrics.json: lacks the keys 'model', 'seed'"):
        T.load_runs([f])
    f.write_text(json.dumps(_metrics("lenet5", "ls-9", "ls-1", 0, 90.0)))
    with pytest.raises(ValueError, match="ls-9"):
        T.load_runs([f])
    g = tmp_path / "again.json"
    g.write_text(json.dumps(_metrics("lenet5", "ls-2", "ls-1", 0, 90.0)))
    f.write_text(g.read_text())
    with pytest.raises(DataError, match="two metrics.json files"):
        T.load_runs([f, g])


def test_evaluations_join_by_source_run_id(runs_dir, tmp_path):
    _, files = runs_dir
    e = tmp_path / "eval.json"
    e.write_text(json.dumps({"top1": 84.5, "top5": 99.0, "n": 100, "source_run_id": "runlenet5ls-1ls-10",
                             "x_quant": "ls-1", "w_quant": "ls-1"}))
    found = R.read_runs(files, [e], exclude_invalid=True)  # its row's other seeds have no evaluation: both left out
    df = found.runs
    hit = df[df.run_id == "runlenet5ls-1ls-10"].iloc[0]
    assert hit.top1_eval == 84.5 and df[df.run_id != "runlenet5ls-1ls-10"].top1_eval.isna().all()
    assert len(df) == 13 and sorted(df[df.x_quant == "ls-1"].seed) == [0] and found.evaluate == [e]
    assert [m.split(", which")[0] for m in found.excluded] == [
        f"{files[3 + s]}: run lenet5 ls-1/ls-1 seed {s} has no evaluation" for s in (1, 2)]
    assert "the run of seed 0 of its row has; pass its file with --evaluate" in found.excluded[0]
    with pytest.raises(RunFileError, match="seed 1 has no evaluation"):
        T.load_runs(files, [e])


def test_qat_table_mean_std_provenance_and_paper(runs_dir):
    _, files = runs_dir
    rows = T.qat_table(T.load_runs(files), T.load_paper(), "fashion-mnist")
    # row order as in the paper: (1,1), (2,1) gf before ls, (32,T), (32,32)
    assert list(zip(rows.x_quant, rows.w_quant)) == [
        ("ls-1", "ls-1"), ("gf-2", "ls-1"), ("ls-2", "ls-1"), ("fp", "ls-T"), ("fp", "fp")]
    by = {(r.x_quant, r.w_quant): r for r in rows.itertuples()}
    for key, accs in ACC.items():
        r = by[key]
        assert r.n_seeds == 3 and r.seeds == "0;1;2" and r.dataset == "fashion-mnist"
        assert r.top1_mean == pytest.approx(statistics.fmean(accs))
        assert r.top1_std == pytest.approx(statistics.stdev(accs))
        assert r.top5_mean == pytest.approx(statistics.fmean(accs) + 8)
        assert r.run_id.split(";") == [f"runlenet5{key[0]}{key[1]}{s}" for s in range(3)]
        assert r.commit == "c0ffee" * 6
    ls2 = by[("ls-2", "ls-1")]
    assert (ls2.v1_imagenet_top1, ls2.v1_imagenet_top1_std, ls2.readme_imagenet_top1,
            ls2.readme_cifar100_top1) == (60.4, 0.2, 63.4, 74.4)
    assert ls2.v1_imagenet_source == "V1 Table 2"
    assert by[("fp", "ls-T")].v1_imagenet_top1 == 64.4 and math.isnan(by[("fp", "ls-T")].readme_imagenet_top1)
    assert by[("fp", "fp")].readme_imagenet_top1 == 69.8
    assert not [c for c in rows.columns if c.startswith("diff")]  # never subtracted across datasets


def test_analysis_rows_join_their_run_by_run_id(runs_dir, tmp_path):
    _, files = runs_dir
    run_df = T.load_runs(files)
    for seed, shift in ((0, 0.0), (1, 1.0)):
        pd.DataFrame({"w_quant": ["fp", "gf-1", "ls-2"], "k_w": ["32", "1", "2"], "x_quant": "fp", "k_a": "32",
                      "top1": [90 + shift, 50 + shift, 80 + shift], "top5": [99, 90, 97],
                      "run_id": f"runlenet5fpfp{seed}", "commit": "c", "config_hash": "h", "data_hash": "d"}
                     ).to_csv(tmp_path / f"anything_{seed}.csv", index=False)
    ptq = T.load_analysis([tmp_path / "anything_0.csv", tmp_path / "anything_1.csv"], run_df)
    assert set(ptq.model) == {"lenet5"} and sorted(set(ptq.seed)) == [0, 1]
    rows = T.ptq_table(ptq, T.load_paper())
    by = {r.w_quant: r for r in rows.itertuples()}
    assert list(rows.w_quant) == ["gf-1", "ls-2", "fp"]
    assert by["ls-2"].top1_mean == 80.5 and by["ls-2"].top1_std == pytest.approx(math.sqrt(0.5))
    assert by["ls-2"].v1_imagenet_top1 == 5.3 and by["gf-1"].v1_imagenet_top1 == 0.1
    assert by["fp"].v1_imagenet_top1 == 69.6 and by["ls-2"].run_id == "runlenet5fpfp0;runlenet5fpfp1"
    pd.DataFrame({"w_quant": ["fp"], "top1": [1.0], "run_id": ["elsewhere"]}).to_csv(tmp_path / "x.csv", index=False)
    with pytest.raises(DataError, match="elsewhere"):
        T.load_analysis([tmp_path / "x.csv"], run_df)


def _models_csv(path):
    """``lsqbq bench models`` rows: bitwise and teacher latencies of lenet5 checkpoints, two layouts, 1 and 2
    threads (only 1 thread counts; the faster layout counts)."""
    ms = {("ls-1", "ls-1"): 0.10, ("ls-2", "ls-1"): 0.20, ("gf-2", "ls-1"): 0.20}
    rows = []
    for (x, w), b in ms.items():
        for batch, scale in ((1, 1.0), (256, 100.0)):
            for threads, factor in ((1, 1.0), (2, 0.1)):
                for impl, t in (("bitwise", b), ("bitwise channels_last", b * 1.5), ("fp32 teacher", 1.0),
                                ("fp32 teacher channels_last", 0.8), ("simulated", 3.0), ("bitwise stored", b / 2),
                                ("bitwise stored channels_last", b / 4)):
                    mode = ("stored" if "stored" in impl else "fitted") if impl.startswith("bitwise") else ""
                    rows.append({"kind": "checkpoint", "model": "lenet5", "x_quant": x, "w_quant": w,
                                 "batch": batch, "threads": threads, "impl": impl, "ms": t * scale * factor,
                                 "scale_mode": mode})
    rows.append({"kind": "network", "model": "", "impl": "bitwise", "batch": 1, "threads": 1, "ms": 0.01})
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def _evaluations(tmp_path):
    """`lsqbq evaluate --scales both` and bitwise-evaluation results for the students with quantized activations."""
    evals, bits = [], []
    for (x, w), accs in ACC.items():
        for seed, a in enumerate(accs):
            rid = f"runlenet5{x}{w}{seed}"
            e = {"top1": a, "top5": a + 8, "n": 10000, "source_run_id": rid, "x_quant": x, "w_quant": w,
                 "scale_mode": "fitted" if x != "fp" else "none"}
            if x != "fp":
                e |= {"top1_fitted": a, "top1_stored": a - 0.5 - 0.1 * seed, "scale_gap": -0.5 - 0.1 * seed}
                bits.append(tmp_path / f"b{rid}.json")
                bits[-1].write_text(json.dumps({"top1": a, "top5": a + 8, "n": 10000, "top1_agreement": 99.9 - seed,
                                                "source_run_id": rid, "x_quant": x, "w_quant": w,
                                                "scale_mode": "fitted"}))
            evals.append(tmp_path / f"e{rid}.json")
            evals[-1].write_text(json.dumps(e))
    return evals, bits


def test_main_writes_readable_tables_with_provenance_in_the_csvs(runs_dir, tmp_path):
    _, files = runs_dir
    out = tmp_path / "tables"
    evals, bits = _evaluations(tmp_path)
    assert T.main(["--dataset", "fashion-mnist", "--out", str(out), "--train", *map(str, files),
                   "--evaluate", *map(str, evals), "--bitwise", *map(str, bits),
                   "--models-bench", str(_models_csv(tmp_path / "models.csv"))]) == 0
    qat = pd.read_csv(out / "qat.csv")
    for col in ("commit", "config_hash", "data_hash", "run_id", "top1_mean", "top1_std", "v1_imagenet_top1",
                "readme_cifar100_top1"):
        assert col in qat.columns
    md = (out / "qat.md").read_text()
    assert "| ls-1          | ls-1      | 1     | 1     | 85.17 ± 1.26 |" in md
    assert "k^a and k^w are the bits of the activations and of the weights" in md
    assert "seeds 0, 1, 2" in md and "paper V1, ImageNet" in md and "54.3 ± 0.2" in md
    for hidden in ("c0ffee", "cfgls", "runlenet5", "Δ", "dddd"):
        assert hidden not in md  # hashes and run ids stay in the CSVs
    per_run = pd.read_csv(out / "qat_runs.csv")
    assert len(per_run) == 15 and per_run["run_id"].notna().all()
    pareto = pd.read_csv(out / "pareto.csv")
    # each model's own latency: 1 thread, the faster layout; bitwise when both sides are quantized, else fp32
    ls1 = pareto[(pareto.x_quant == "ls-1")].iloc[0]
    assert ls1["ms_b1"] == pytest.approx(0.1) and ls1["ms_b256"] == pytest.approx(10.0) and ls1["pareto"]
    assert ls1["runs_on"] == "bitwise 1x1" and ls1["scale_mode"] == "fitted"  # the trained mode, not the faster
    assert ls1["stored_ms_b1"] == pytest.approx(0.025) and ls1["stored_ms_b256"] == pytest.approx(2.5)
    gf2 = pareto[(pareto.x_quant == "gf-2")].iloc[0]
    assert gf2["ms_b1"] == pytest.approx(0.2) and not gf2["pareto"]  # ls-2: same latency, more accurate
    fp = pareto[(pareto.x_quant == "fp")]
    assert fp["ms_b1"].tolist() == pytest.approx([0.8, 0.8]) and set(fp["runs_on"]) == {"fp32"}
    assert (out / "pareto.png").stat().st_size > 0 and "scales" in (out / "pareto.md").read_text()
    inference = pd.read_csv(out / "inference.csv")
    assert list(inference.x_quant) == ["ls-1", "gf-2", "ls-2"]  # quantized activations only, display order
    ls2 = inference[inference.x_quant == "ls-2"].iloc[0]
    gaps = [-0.5, -0.6, -0.7]
    mean, lo, hi, _ = T.t_interval(gaps)
    assert ls2["top1_fitted_mean"] == pytest.approx(statistics.fmean(ACC[("ls-2", "ls-1")]))
    assert (ls2["gap_mean"], ls2["gap_ci_low"], ls2["gap_ci_high"]) == (pytest.approx(mean), pytest.approx(lo),
                                                                         pytest.approx(hi))
    assert ls2["agreement_min"] == pytest.approx(97.9) and ls2["bitwise_scale_mode"] == "fitted"
    assert "stored - fitted" in (out / "inference.md").read_text()
    claims = pd.read_csv(out / "claims.csv")
    qat_claims = claims[claims.claim.str.startswith("QAT")]
    # the pairs that ran, once per activation-scale mode
    assert list(qat_claims.claim) == ["QAT: ls-2 above gf-2 activations (ls-1 weights)"] * 2
    assert list(qat_claims.scales) == ["fitted", "stored"] and list(qat_claims.n) == [3, 3]
    assert list(qat_claims.verdict) == ["reproduced"] * 2  # p = 0.008 each: both survive Holm
    assert list(qat_claims.holm_level) == pytest.approx([0.975, 0.95])
    assert "What this profile can and cannot show" in (out / "claims.md").read_text()


def test_main_reports_missing_runs(tmp_path, capsys):
    assert T.main(["--dataset", "x", "--out", str(tmp_path / "o")]) == 3
    assert "no runs found" in capsys.readouterr().err


def test_outputs_are_byte_identical_when_rebuilt(runs_dir, tmp_path):
    _, files = runs_dir
    models = _models_csv(tmp_path / "models.csv")
    outs = [tmp_path / "a", tmp_path / "b"]
    for out in outs:
        assert T.main(["--dataset", "fashion-mnist", "--out", str(out), "--train", *map(str, files),
                       "--models-bench", str(models)]) == 0
    names = sorted(p.name for p in outs[0].iterdir())
    assert names == sorted(p.name for p in outs[1].iterdir()) and "pareto.png" in names
    for name in names:
        assert (outs[0] / name).read_bytes() == (outs[1] / name).read_bytes(), name


def test_paper_numbers_file():
    rows = T.load_paper()
    assert {"V1 Table 1", "V1 Table 2", "README ImageNet", "README CIFAR-100"} <= set(rows.source)
    assert (rows.source != "").all() and (rows.top1.astype(float) > 0).all()
    readme = {(r.x_quant, r.w_quant): float(r.top1) for r in rows.itertuples() if r.source == "README ImageNet"}
    assert readme == {("ls-1", "ls-1"): 58.9, ("ls-T", "ls-1"): 62.0, ("gf-2", "ls-1"): 62.6, ("ls-2", "ls-1"): 63.4,
                      ("fp", "ls-1"): 66.1, ("fp", "fp"): 69.8}
    cifar = {(r.x_quant, r.w_quant): float(r.top1) for r in rows.itertuples() if r.source == "README CIFAR-100"}
    assert cifar[("ls-2", "ls-1")] == 74.4 and cifar[("fp", "fp")] == 77.8 and len(cifar) == 6
    post = rows[rows.training == "post"]
    assert dict(zip(post.w_quant, post.top1.astype(float))) == {"gf-1": 0.1, "gf-2": 0.3, "gf-3": 1.4, "gf-4": 5.3,
                                                                 "ls-2": 5.3}


COMMITTED = ROOT / "results"


def _seed_order(path):
    """The workflow passes per-seed files model by model, seeds in numeric order (s2 before s10)."""
    return path.parent.name, int(path.stem.rsplit("_s", 1)[1])


@pytest.mark.skipif(not (COMMITTED / "train").is_dir(), reason="no committed results")
def test_committed_tables_are_what_the_tables_command_builds(tmp_path):
    """The tables under results/tables are regenerated from the committed per-run results, byte for byte."""
    ds = "fashion-mnist"
    analysis = COMMITTED / "analysis" / ds
    models = sorted(p.name for p in analysis.iterdir())
    args = ["--dataset", ds, "--out", str(tmp_path), "--paper", str(R.DEFAULT_PAPER),
            "--train", *map(str, sorted((COMMITTED / "train" / ds).glob("*/*/s*/metrics.json"))),
            "--evaluate", *map(str, sorted((COMMITTED / "evaluate" / ds).glob("*/*/s*/metrics.json"))),
            "--ptq", *map(str, sorted(analysis.glob("*/ptq_fp_fp_s*.csv"))),
            "--error", *[str(analysis / m / "error.csv") for m in models],
            "--angles", *map(str, sorted(analysis.glob("*/angles_fp_fp_s*.csv"), key=_seed_order)),
            "--bitwise", *map(str, sorted((COMMITTED / "evaluate" / ds).glob("*/*/s*/bitwise.json"))),
            "--models-bench", str(COMMITTED / "bench" / "models.csv"),
            "--training-bench", str(COMMITTED / "bench" / "training.csv")]
    assert T.main(args) == 0
    for f in sorted(tmp_path.iterdir()):
        if f.suffix in (".csv", ".md"):
            assert f.read_text() == (COMMITTED / "tables" / ds / f.name).read_text(), f.name


def test_a_single_run_gives_tables_without_intervals(tmp_path):
    f = tmp_path / "m.json"
    f.write_text(json.dumps(_metrics("lenet5", "ls-2", "ls-1", 0, 88.0)))
    assert T.main(["--dataset", "fashion-mnist", "--out", str(tmp_path / "o"), "--train", str(f)]) == 0
    qat = (tmp_path / "o" / "qat.md").read_text()
    assert "over seed 0 (1 run per cell)" in qat and "| 88.00 " in qat
    assert "No claim of the paper can be tested with these results." in (tmp_path / "o" / "claims.md").read_text()


def test_the_qat_caption_names_the_seeds_of_each_cell_count(tmp_path):
    """Cells over more seeds than the common count are marked (n=k), and the caption says which seeds they use."""
    files = []
    for model, x, seeds in (("lenet5", "ls-2", (0, 1)), ("resnet_small", "ls-2", (0, 1)),
                            ("resnet_small", "ls-1", (0, 1, 2, 3))):
        for s in seeds:
            f = tmp_path / f"{model}_{x}_{s}.json"
            f.write_text(json.dumps(_metrics(model, x, "ls-1", s, 88.0 + s)))
            files.append(str(f))
    assert T.main(["--dataset", "fashion-mnist", "--out", str(tmp_path / "o"), "--train", *files]) == 0
    qat = (tmp_path / "o" / "qat.md").read_text()
    assert "over seeds 0, 1 (2 runs per cell); cells marked (n=4): seeds 0, 1, 2, 3;" in qat
    assert "89.50 ± 1.29 (n=4)" in qat
