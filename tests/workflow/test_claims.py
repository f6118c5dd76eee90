"""lsqbq.tables.claims: paired differences over seeds and teachers, t intervals and verdicts."""
import math

import pandas as pd
import pytest

from lsqbq.tables import claims as C
from lsqbq.tables import load_paper

T95_2 = 4.302652729911275  # t_{0.975, 2}


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
    assert rows.iloc[1].verdict == C.NOT_SEPARABLE  # gf-2 - ls-T: -0.1, -0.1, +0.2
    assert rows.iloc[2].verdict == C.NOT_SEPARABLE  # ls-T - ls-1: large but noisy over 3 seeds


def test_pairs_need_the_same_teacher():
    runs = _runs({("ls-2", "ls-1"): [90.0, 91.0, 92.0], ("gf-2", "ls-1"): [89.0, 90.0, 91.0]})
    runs.loc[(runs.x_quant == "gf-2") & (runs.seed == 2), "teacher_run_id"] = "another teacher"
    row = C.qat_claims(runs, load_paper())[0]
    assert row["n"] == 2  # seed 2 was distilled from different teachers: not a pair


def test_contradicted_when_the_interval_lies_on_the_other_side():
    runs = _runs({("ls-2", "ls-1"): [89.0, 90.0, 91.0], ("gf-2", "ls-1"): [89.5, 90.6, 91.4]})
    assert C.qat_claims(runs, load_paper())[0]["verdict"] == C.CONTRADICTED


def test_training_cost_relative_to_gf2():
    times = {("ls-2", "ls-1"): [130.0, 132.0, 128.0], ("gf-2", "ls-1"): [100.0, 101.0, 99.0]}
    runs = _runs({("ls-2", "ls-1"): [1.0] * 3, ("gf-2", "ls-1"): [1.0] * 3}, times)
    bench = pd.DataFrame({"model": ["m", "m"], "x_quant": ["ls-2", "gf-2"], "w_quant": ["ls-1", "ls-1"],
                          "ms_per_step": [13.0, 10.0]})
    row = C.cost_claims(runs, bench)[0]
    rel = [30.0, 100 * (132 / 101 - 1), 100 * (128 / 99 - 1)]
    assert row["difference"] == pytest.approx(sum(rel) / 3) and row["verdict"] == C.REPRODUCED
    assert "step benchmark 13.0 vs 10.0 ms (+30.0 %)" in row["ours"]


def test_ptq_pairs_by_fp_model():
    ptq = pd.DataFrame({"model": "m", "seed": [0, 0, 1, 1, 2, 2], "run_id": ["a", "a", "b", "b", "c", "c"],
                        "w_quant": ["ls-2", "gf-2"] * 3, "top1": [60.0, 40.0, 50.0, 31.0, 70.0, 49.0]})
    row = C.ptq_claims(ptq, load_paper())[0]
    assert row["difference"] == pytest.approx(20.0) and row["verdict"] == C.REPRODUCED and row["n"] == 3
    assert "5.3 vs 0.3" in row["paper"]


def test_lloyd_max_claim_uses_the_tolerance():
    rows = []
    for source in ("normal", "laplace", "uniform", "weights"):
        for scheme, excess in (("ls-2", 0.004), ("ls-T", 0.002), ("gf-2", 0.2)):
            rows.append({"model": "m", "source": source, "scheme": scheme, "excess": 0.5 if source == "weights"
                         else excess, "n_values": 1000})
    out = C.lloyd_max_claims(pd.DataFrame(rows))
    assert [r["verdict"] for r in out] == [C.REPRODUCED, C.REPRODUCED]  # model data (skewed) is not the claim
    assert out[0]["difference"] == pytest.approx(0.4) and out[0]["n"] == 3
    rows[0]["excess"] = 0.02
    assert C.lloyd_max_claims(pd.DataFrame(rows))[0]["verdict"] == C.CONTRADICTED


def test_angle_claim_in_later_layers_and_for_a_single_layer():
    rows = []
    for layer in range(4):
        for scheme, angle in (("ls-2", 20.0), ("gf-4", 25.0 if layer >= 2 else 10.0)):
            rows.append({"model": "deep", "seed": 0, "layer_index": layer, "layer": f"l{layer}", "scheme": scheme,
                         "angle_deg": angle, "angle_ci95": 0.5, "images": 128})
    rows += [{"model": "one", "seed": 0, "layer_index": 0, "layer": "bn2", "scheme": s, "angle_deg": a,
              "angle_ci95": 0.5, "images": 128} for s, a in (("ls-2", 21.0), ("gf-4", 17.0))]
    out = {r["model"]: r for r in C.angle_claims(pd.DataFrame(rows))}
    deep = out["deep"]
    assert deep["difference"] == pytest.approx(-5.0) and deep["verdict"] == C.REPRODUCED  # layers 3-4 of 4 only
    se = math.sqrt(4 * (0.5 / C.Z95) ** 2) / 2
    assert deep["ci_high"] == pytest.approx(-5.0 + C.Z95 * se)
    assert "layers 3-4 of 4" in deep["ours"]
    assert out["one"]["verdict"] == C.CONTRADICTED and "its only layer" in out["one"]["ours"]
