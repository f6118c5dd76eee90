"""lsqbq.tables.claims: paired differences over seeds and teachers, t and bootstrap intervals, Holm over the
accuracy family, equivalence, both scale modes, per-image predictions and the exact Lloyd-Max rows."""
import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from lsqbq.analysis.measures import angle_rows
from lsqbq.analysis.sweep import spike_slab_rows
from lsqbq.errors import DataError
from lsqbq.stats import EQUIVALENCE_MARGIN, hierarchical_bootstrap, holm_levels
from lsqbq.tables import claims as C
from lsqbq.tables import load_paper
from lsqbq.tables.predictions import load_predictions
from lsqbq.tables.render import fmt_percent

T95_2 = 4.302652729911275  # t_{0.975, 2}
T90_2 = 2.919985580355516  # t_{0.95, 2}


def _runs(acc: dict, times: dict | None = None, teachers: bool = True) -> pd.DataFrame:
    rows = []
    for (x, w), vals in acc.items():
        for seed, v in enumerate(vals):
            rows.append({"dataset": "d", "model": "m", "x_quant": x, "w_quant": w, "seed": seed, "top1": v,
                         "top5": 99.0, "train_time_s": (times or {}).get((x, w), [100.0] * len(vals))[seed],
                         "teacher_run_id": f"teacher{seed}" if teachers else "", "run_id": f"{x}{w}{seed}"})
    return pd.DataFrame(rows)


@pytest.mark.parametrize("lo, hi, sign, expected", [
    (0.1, 0.9, 1, C.REPRODUCED), (-0.9, -0.1, 1, C.CONTRADICTED), (-0.1, 0.9, 1, C.NOT_SEPARABLE),
    (-0.9, -0.1, -1, C.REPRODUCED), (0.1, 0.9, -1, C.CONTRADICTED), (float("nan"), float("nan"), 1, C.NOT_SEPARABLE),
])
def test_verdict(lo, hi, sign, expected):
    assert C.verdict(lo, hi, sign) == expected


def test_qat_ordering_paired_by_seed():
    runs = _runs({("ls-2", "ls-1"): [90.0, 91.0, 92.0], ("gf-2", "ls-1"): [89.5, 90.3, 91.6],
                  ("ls-T", "ls-1"): [89.6, 90.4, 91.4], ("ls-1", "ls-1"): [80.0, 90.0, 82.0]})
    rows = pd.DataFrame(C.qat_claims(runs, load_paper()))
    assert len(rows) == 3
    first = rows.iloc[0]
    diffs = [0.5, 0.7, 0.4]  # the seed-to-seed spread cancels in the paired differences
    mean, sd = sum(diffs) / 3, pd.Series(diffs).std()
    assert first.claim.startswith("QAT: ls-2 above gf-2") and first.n == 3
    assert first.difference == pytest.approx(mean)
    assert (first.ci_low, first.ci_high) == (pytest.approx(mean - T95_2 * sd / math.sqrt(3)),
                                            pytest.approx(mean + T95_2 * sd / math.sqrt(3)))
    assert first.verdict == C.REPRODUCED and first.pairing == "by seed and teacher"
    assert "60.4 vs 59.7" in first.paper  # the paper's own numbers, never subtracted from ours
    assert first.scales == "as trained" and first.method.startswith("paired t over seeds")
    # gf-2 - ls-T: -0.1, -0.1, +0.2: unresolved, but both one-sided 95 % bounds within ±0.5 points
    second, sd2 = rows.iloc[1], pd.Series([-0.1, -0.1, 0.2]).std()
    assert (second.bound_low, second.bound_high) == (pytest.approx(-T90_2 * sd2 / math.sqrt(3)),
                                                    pytest.approx(T90_2 * sd2 / math.sqrt(3)))
    assert second.verdict == C.EQUIVALENT == f"equivalent within ±{EQUIVALENCE_MARGIN:g} points"
    assert rows.iloc[2].verdict == C.NOT_SEPARABLE  # ls-T - ls-1: large but noisy over 3 seeds


def test_pairs_need_the_same_teacher():
    runs = _runs({("ls-2", "ls-1"): [90.0, 91.0, 92.0], ("gf-2", "ls-1"): [89.0, 90.0, 91.0]})
    runs.loc[(runs.x_quant == "gf-2") & (runs.seed == 2), "teacher_run_id"] = "another teacher"
    row = C.qat_claims(runs, load_paper())[0]
    assert row["n"] == 2  # seed 2 was distilled from different teachers: not a pair


def test_contradicted_when_the_interval_lies_on_the_other_side():
    runs = _runs({("ls-2", "ls-1"): [89.0, 90.0, 91.0], ("gf-2", "ls-1"): [89.5, 90.6, 91.4]})
    assert C.qat_claims(runs, load_paper())[0]["verdict"] == C.CONTRADICTED


def test_training_cost_from_the_step_benchmark_with_wall_time_as_context():
    times = {("ls-2", "ls-1"): [130.0, 132.0, 128.0], ("gf-2", "ls-1"): [100.0, 101.0, 99.0]}
    runs = _runs({("ls-2", "ls-1"): [1.0] * 3, ("gf-2", "ls-1"): [1.0] * 3}, times)
    bench = pd.DataFrame({"model": ["m", "m", "m"], "x_quant": ["ls-2", "gf-2", "fp"],
                          "w_quant": ["ls-1", "ls-1", "fp"], "ms_per_step": [13.0, 10.0, 8.0], "batch": 128,
                          "threads": 1})
    row = C.cost_claims(runs, bench)[0]
    assert row["difference"] == pytest.approx(30.0) and row["verdict"] == C.REPRODUCED
    assert "step benchmark 13.0 vs 10.0 ms (+30.0 %)" in row["ours"]
    wall = np.mean([30.0, 100 * (132 / 101 - 1), 100 * (128 / 99 - 1)])
    assert f"({fmt_percent(wall / 100)}, 3 seeds)" in row["ours"] and "context: wall time" in row["ours"]
    # within the benchmark's tolerance: not separated; clearly faster: contradicted
    near = bench.assign(ms_per_step=[10.0 * (1 + C.BENCH_TOLERANCE / 200), 10.0, 8.0])
    assert C.cost_claims(runs, near)[0]["verdict"] == C.NOT_SEPARABLE
    assert C.cost_claims(runs, bench.assign(ms_per_step=[8.0, 10.0, 8.0]))[0]["verdict"] == C.CONTRADICTED
    assert C.cost_claims(runs, pd.DataFrame()) == []  # wall time alone is no longer a measurement of cost


def test_ptq_pairs_by_fp_model():
    ptq = pd.DataFrame({"model": "m", "seed": [0, 0, 1, 1, 2, 2], "run_id": ["a", "a", "b", "b", "c", "c"],
                        "w_quant": ["ls-2", "gf-2"] * 3, "top1": [60.0, 40.0, 50.0, 31.0, 70.0, 49.0]})
    row = C.ptq_claims(ptq, load_paper())[0]
    assert row["difference"] == pytest.approx(20.0) and row["verdict"] == C.REPRODUCED and row["n"] == 3
    assert "5.3 vs 0.3" in row["paper"]


def _error_rows(ls2_excess: float = 0.004) -> pd.DataFrame:
    rows = []
    for source in ("normal", "laplace", "uniform", "weights"):
        for scheme, excess in (("ls-2", ls2_excess), ("ls-T", 0.002), ("gf-2", 0.2)):
            rows.append({"model": "m", "source": source, "scheme": scheme, "excess": 0.5 if source == "weights"
                         else excess, "n_values": 1000})
    return pd.DataFrame(rows)


def test_lloyd_max_claim_is_exact_on_the_densities():
    out = C.lloyd_max_claims(_error_rows(ls2_excess=0.05), points=1 << 14)
    # the verdict comes from the densities, not from the sampled excess (+5 % here): both schemes are optimal
    assert [r["verdict"] for r in out] == [C.REPRODUCED, C.REPRODUCED] and out[0]["n"] == 3
    assert abs(out[0]["difference"]) < 1e-4  # percent
    assert "normal 0.117482 vs 0.117482" in out[0]["ours"] and "normal 0.190174 vs 0.190174" in out[1]["ours"]
    assert "normal +5.0 %" in out[0]["ours"]


def test_lloyd_max_claim_is_contradicted_beyond_the_numerical_tolerance(monkeypatch):
    from lsqbq.analysis.exact import EXACT_RTOL

    monkeypatch.setattr(C, "excess_over_lloyd_max", lambda s, d, points: (1.0 + 3 * EXACT_RTOL, 1.0, 4))
    assert {r["verdict"] for r in C.lloyd_max_claims(_error_rows())} == {C.CONTRADICTED}
    monkeypatch.setattr(C, "excess_over_lloyd_max", lambda s, d, points: (1.0 + EXACT_RTOL / 2, 1.0, 4))
    assert {r["verdict"] for r in C.lloyd_max_claims(_error_rows())} == {C.REPRODUCED}


def _measured_angles(p: float, teachers: int = 4, layers: int = 4, source: str = "teacher") -> pd.DataFrame:
    """Angle rows measured by lsqbq.analysis on spike-and-slab rows (p = 0: Gaussian), one frame per teacher."""
    frames = []
    for seed in range(teachers):
        acts = [spike_slab_rows(p, 24, 512, seed=100 * seed + li) for li in range(layers)]
        rows = angle_rows([f"l{li}" for li in range(layers)], acts, input=source, input_run="fp/fp")
        frames.append(pd.DataFrame(rows).assign(model="m", seed=seed))
    return pd.concat(frames, ignore_index=True)


def _claim(rows: list[dict], text: str) -> dict:
    (found,) = [r for r in rows if r["claim"].startswith(text)]
    return found


@pytest.mark.parametrize("p", [0.0, 0.9])
def test_angle_claims_optimal_below_greedy_at_equal_bits_on_any_rows(p):
    df = _measured_angles(p)
    rows = C.angle_claims(df)
    assert {r["kind"] for r in rows} == {"angle"} and len(rows) == 5
    for a, b in C.EQUAL_BITS:
        r = _claim(rows, f"angle of {a} below {b}")
        wide = df[df["scheme"].isin((a, b))].pivot_table(index=["seed", "layer_index"], columns="scheme",
                                                         values="angle_deg")
        per_teacher = (wide[a] - wide[b]).groupby(level="seed").mean().to_numpy()  # every layer, images averaged
        half = stats.t.ppf(0.975, 3) * per_teacher.std(ddof=1) / 2
        assert r["difference"] == pytest.approx(per_teacher.mean())
        assert (r["ci_low"], r["ci_high"]) == pytest.approx((per_teacher.mean() - half, per_teacher.mean() + half))
        assert r["verdict"] == C.REPRODUCED and r["n"] == 4 and "every quantized layer (4)" in r["setting"]
        assert "lower in 4 of 4 layers" in r["ours"]
    spread = _claim(rows, "spread over images of the angle: ls-T below ls-1")
    assert spread["claim"].endswith("on the teachers' BN outputs") and spread["unit"] == "degrees"
    assert spread["difference"] == pytest.approx(
        (df[df.scheme == "ls-T"]["angle_std"].to_numpy() - df[df.scheme == "ls-1"]["angle_std"].to_numpy()).mean())


def test_angle_claim_against_gf4_depends_on_the_distribution():
    gauss = _claim(C.angle_claims(_measured_angles(0.0)), "angle of ls-2 below gf-4 in later layers")
    sparse = _claim(C.angle_claims(_measured_angles(0.9)), "angle of ls-2 below gf-4 in later layers")
    assert gauss["verdict"] == C.CONTRADICTED and sparse["verdict"] == C.REPRODUCED
    assert "depends on the activations' distribution" in gauss["claim"] and "layers 3-4 of 4" in gauss["setting"]
    assert "excess kurtosis 0." in gauss["ours"] or "excess kurtosis -0." in gauss["ours"]
    kurt = float(sparse["ours"].split("excess kurtosis ")[1].split(",")[0])
    assert kurt > 10  # the sparse rows' heavy tail, reported beside the verdict


def test_angle_claims_per_input_and_for_one_teacher():
    teacher = _measured_angles(0.0, teachers=1, layers=2)
    student = _measured_angles(0.9, teachers=1, layers=2, source="student").assign(input_run="ls-2/ls-1")
    rows = C.angle_claims(pd.concat([teacher, student], ignore_index=True))
    t, s = (_claim([r for r in rows if w in r["setting"]], "angle of ls-2 below gf-4")
            for w in ("teachers' BN outputs", "ls-2/ls-1 students' activation quantizers (clamped)"))
    assert "on the ls-2/ls-1 students' quantizer inputs" in s["claim"] and "on the teachers'" in t["claim"]
    assert t["verdict"] == C.CONTRADICTED and s["verdict"] == C.REPRODUCED and len(rows) == 10
    # one teacher: the normal approximation over its images, per-layer intervals combined as independent
    r = _claim([r for r in rows if r is not t and "BN outputs" in r["setting"]], "angle of ls-2 below gf-2")
    g = teacher.set_index(["layer_index", "scheme"])
    d = [g.loc[(li, "ls-2"), "angle_deg"] - g.loc[(li, "gf-2"), "angle_deg"] for li in (0, 1)]
    se = math.sqrt(sum((g.loc[(li, s), "angle_ci95"] / C.Z95) ** 2 for li in (0, 1) for s in ("ls-2", "gf-2"))) / 2
    assert r["difference"] == pytest.approx(np.mean(d)) and r["ci_high"] == pytest.approx(np.mean(d) + C.Z95 * se)
    assert r["method"] == "normal approximation over images" and math.isnan(r["t_low"]) and r["n"] == 1


def test_angle_claims_read_an_older_csv_without_inputs_or_spread():
    rows = []
    for layer in range(4):
        for scheme, angle in (("ls-2", 20.0), ("gf-4", 25.0 if layer >= 2 else 10.0), ("gf-2", 21.0)):
            rows.append({"model": "deep", "seed": 0, "layer_index": layer, "layer": f"l{layer}", "scheme": scheme,
                         "angle_deg": angle, "angle_ci95": 0.5, "images": 128})
    out = C.angle_claims(pd.DataFrame(rows))
    deep = _claim(out, "angle of ls-2 below gf-4")
    assert deep["difference"] == pytest.approx(-5.0) and deep["verdict"] == C.REPRODUCED  # layers 3-4 of 4 only
    assert deep["ci_high"] == pytest.approx(-5.0 + C.Z95 * math.sqrt(4 * (0.5 / C.Z95) ** 2) / 2)
    assert _claim(out, "angle of ls-2 below gf-2")["difference"] == pytest.approx(-1.0)
    assert len(out) == 2  # no ls-T / ls-1 columns and no spread: those rows are left out


# ---------------------------------------------------------------------------------- family, modes, bootstrap


def _two_mode_runs() -> pd.DataFrame:
    runs = _runs({("ls-2", "ls-1"): [90.0, 91.0, 92.0], ("gf-2", "ls-1"): [89.5, 90.3, 91.6]})
    runs["top1_fitted"] = runs["top1"]
    runs["top1_stored"] = runs["top1"] - np.where(runs["x_quant"] == "ls-2", 1.0, 0.0) + 0.1 * runs["seed"]
    return runs


def test_qat_claims_once_per_scale_mode():
    rows = pd.DataFrame(C.qat_claims(_two_mode_runs(), load_paper()))
    assert list(rows["scales"]) == ["fitted", "stored"]
    assert rows.iloc[0].difference == pytest.approx(1.6 / 3) and rows.iloc[1].difference == pytest.approx(1.6 / 3 - 1)
    assert "stored" in rows.iloc[1].setting


def test_build_claims_adjusts_the_accuracy_family_with_holm():
    ptq = pd.DataFrame({"model": "m", "seed": [0, 0, 1, 1, 2, 2], "run_id": ["a", "a", "b", "b", "c", "c"],
                        "w_quant": ["ls-2", "gf-2"] * 3, "top1": [60.0, 40.0, 50.0, 31.0, 70.0, 49.0]})
    table = C.build_claims(_two_mode_runs(), load_paper(), ptq=ptq)
    family = table[table["kind"].isin(["ptq", "qat"])]
    assert len(family) == 3
    assert list(family["holm_level"]) == pytest.approx(holm_levels(list(family["p_value"])))
    for r in family.itertuples():  # the verdict is read off the adjusted interval, the unadjusted one stays
        assert r.holm_low <= r.ci_low and r.holm_high >= r.ci_high
        assert (r.verdict == C.REPRODUCED) == (r.holm_low > 0)
    fitted = family[family["scales"] == "fitted"].iloc[0]
    assert fitted.ci_low > 0  # resolved at 95 % on its own (p = 0.026) ...
    assert fitted.p_value > 0.05 / 3 and fitted.holm_low < 0 and fitted.verdict != C.REPRODUCED  # ... not in a family
    assert family[family["kind"] == "ptq"].iloc[0].verdict == C.REPRODUCED  # p = 0.0009 survives
    assert "analysis" not in table.columns and list(table.columns) == list(C.COLUMNS)


def _predictions(runs: pd.DataFrame, images: int = 400, seed: int = 0) -> dict[str, np.ndarray]:
    """Per-image predictions whose accuracy is each run's recorded top-1 (rounded to 0.25 points)."""
    rng = np.random.default_rng(seed)
    target = rng.integers(0, 10, images).astype("u1")
    dtype = [("target", "u1"), ("pred_fitted", "u1"), ("p_true_fitted", "f2"), ("pred_stored", "u1"),
             ("p_true_stored", "f2")]
    out = {}
    for r in runs.itertuples():
        arr = np.zeros(images, dtype=dtype)
        arr["target"] = target
        for mode in ("fitted", "stored"):
            right = np.zeros(images, bool)
            right[rng.permutation(images)[:round(getattr(r, f"top1_{mode}") / 100 * images)]] = True
            arr[f"pred_{mode}"] = np.where(right, target, (target + 1) % 10)
            arr[f"p_true_{mode}"] = np.where(right, 0.9, 0.05)
        out[r.run_id] = arr
    return out


def test_qat_claims_use_the_bootstrap_when_every_run_has_predictions():
    runs = _two_mode_runs()
    runs["top1_fitted"] = runs["top1_stored"] = runs["top1"] = [90.0, 91.0, 92.0, 89.5, 90.25, 91.5]
    preds = _predictions(runs)
    rows = pd.DataFrame(C.qat_claims(runs, load_paper(), preds))
    first = rows.iloc[0]
    assert first.method == "hierarchical bootstrap over seeds and test images" and first.images == 400
    a = np.stack([preds[f"ls-2ls-1{s}"]["pred_fitted"] == preds[f"ls-2ls-1{s}"]["target"] for s in range(3)])
    b = np.stack([preds[f"gf-2ls-1{s}"]["pred_fitted"] == preds[f"gf-2ls-1{s}"]["target"] for s in range(3)])
    ref = hierarchical_bootstrap(a, b)
    assert first.difference == pytest.approx(ref.estimate) == pytest.approx(1.75 / 3)
    assert (first.ci_low, first.ci_high) == ref.interval(0.95) and first.p_value == ref.pvalue
    assert (first.t_low, first.t_high) == (pytest.approx(first.difference - T95_2 * pd.Series(
        [0.5, 0.75, 0.5]).std() / math.sqrt(3)), pytest.approx(first.difference + T95_2 * pd.Series(
        [0.5, 0.75, 0.5]).std() / math.sqrt(3)))  # the seed-only t interval stays beside
    del preds["gf-2ls-12"]  # one run without predictions: that row falls back to the t interval, and says so
    fallback = C.qat_claims(runs, load_paper(), preds)[0]
    assert fallback["method"] == "paired t over seeds (no per-image predictions)"
    assert (fallback["ci_low"], fallback["ci_high"]) == (first.t_low, first.t_high)


def test_predictions_that_disagree_with_the_recorded_accuracy_are_an_error():
    runs = _two_mode_runs()
    runs["top1_fitted"] = runs["top1_stored"] = runs["top1"] = [90.0, 91.0, 92.0, 89.5, 90.25, 91.5]
    preds = _predictions(runs)
    runs.loc[0, "top1_fitted"] = 95.0
    with pytest.raises(DataError, match=r"predictions of run ls-2ls-10 \(m ls-2/ls-1 seed 0\): fitted accuracy "
                                        r"90\.000 % differs from the recorded top1_fitted 95\.00 %"):
        C.qat_claims(runs, load_paper(), preds)


def test_load_predictions_joins_by_source_run_id_and_checks_the_file(tmp_path):
    arr = np.zeros(5, dtype=[("target", "u1"), ("pred_fitted", "u1"), ("p_true_fitted", "f2")])
    for name, run_id in (("a", "run-a"), ("b", "run-b")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.json").write_text(json.dumps({"source_run_id": run_id}))
    np.save(tmp_path / "a" / "predictions.npy", arr)  # b has none: skipped
    loaded = load_predictions([tmp_path / "a" / "metrics.json", tmp_path / "b" / "metrics.json"])
    assert list(loaded) == ["run-a"] and loaded["run-a"].dtype == arr.dtype
    np.save(tmp_path / "b" / "predictions.npy", np.zeros(5, dtype=[("target", "u1"), ("p_true_fitted", "f2")]))
    with pytest.raises(DataError,
                       match=r"b/predictions.npy: not a predictions file \(fields \['target', 'p_true_fitted'\]"):
        load_predictions([tmp_path / "b" / "metrics.json"])
    np.save(tmp_path / "b" / "predictions.npy", np.array([{"x": 1}], dtype=object))
    with pytest.raises(DataError, match=r"b/predictions.npy: not a predictions file \(Object arrays"):
        load_predictions([tmp_path / "b" / "metrics.json"])
    (tmp_path / "b" / "metrics.json").write_text(json.dumps({"top1": 90.0}))
    with pytest.raises(DataError, match="evaluation names no source_run_id, so .*predictions.npy cannot be joined"):
        load_predictions([tmp_path / "b" / "metrics.json"])
