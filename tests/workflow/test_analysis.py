"""lsqbq.analysis: Lloyd-Max references, the official skip-3 reference schemes, error tables, activation hooks and
the command's outputs (fast unit tests)."""
import itertools
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import lsqbq
from lsqbq import analysis as A
from lsqbq.quantizers import fit_official_skip3
from lsqbq.schemes import get_scheme, quantize


@pytest.mark.parametrize("levels, mse", [(2, 1 - 2 / math.pi), (3, 0.1902), (4, 0.1175)])
def test_lloyd_max_gaussian_known_values(levels, mse):
    # Classical Lloyd-Max optima of N(0,1) (Max 1960): 0.3634, 0.1902, 0.1175.
    code, err = A.lloyd_max_density("normal", levels)
    assert err == pytest.approx(mse, abs=2e-4)
    assert np.allclose(code, -code[::-1], atol=1e-4)  # symmetric density -> symmetric codebook


def test_lloyd_max_uniform_is_uniform_quantizer():
    # Uniform on [-sqrt3, sqrt3], L levels: cells of width w = 2 sqrt3 / L, MSE = w^2 / 12.
    for levels in (2, 4, 8):
        _, err = A.lloyd_max_density("uniform", levels)
        assert err == pytest.approx((2 * math.sqrt(3) / levels) ** 2 / 12, rel=1e-3)


def _normal_lloyd_closed_form(levels: int, iters: int = 20_000) -> tuple[np.ndarray, float]:
    """Lloyd's iteration for N(0,1) with closed-form cell moments, independent of quadrature: mass
    Phi(b) - Phi(a), centroid (phi(a) - phi(b)) / mass, and MSE = 1 - sum mass * centroid^2 at the fixed point."""
    from scipy.stats import norm

    code = norm.ppf((np.arange(levels) + 0.5) / levels)
    for _ in range(iters):
        edges = np.concatenate([[-np.inf], (code[1:] + code[:-1]) / 2, [np.inf]])
        mass = np.diff(norm.cdf(edges))
        new = -np.diff(norm.pdf(edges)) / mass
        if np.max(np.abs(new - code)) < 1e-15:
            break
        code = new
    return code, float(1 - np.sum(mass * code**2))


@pytest.mark.parametrize("levels, known", [(2, 1 - 2 / math.pi), (3, 0.1902), (4, 0.1175)])
def test_lloyd_max_exact_gaussian_optima(levels, known):
    code, mse = A.lloyd_max_exact("normal", levels)
    ref_code, ref_mse = _normal_lloyd_closed_form(levels)
    assert mse == pytest.approx(ref_mse, rel=1e-10) and np.allclose(code, ref_code, atol=1e-10)
    assert mse == pytest.approx(known, abs=5e-5)  # Max (1960), to the 4 decimals quoted: 0.3634, 0.1902, 0.1175


@pytest.mark.parametrize("levels", [2, 3, 4])
def test_lloyd_max_exact_uniform_and_laplace(levels):
    # Uniform on [-sqrt3, sqrt3]: equal cells, MSE = (2 sqrt3 / L)^2 / 12 = 1 / L^2.
    assert A.lloyd_max_exact("uniform", levels)[1] == pytest.approx(1 / levels**2, rel=1e-12)
    # Laplace: the exact optimum agrees with Lloyd on a fine tabulated density and is never above it.
    exact = A.lloyd_max_exact("laplace", levels)[1]
    assert exact == pytest.approx(A.lloyd_max_density("laplace", levels)[1], rel=1e-4)
    if levels == 2:  # centroids +-E|X| = +-b with b = 1/sqrt2: MSE = 1 - 1/2
        assert exact == pytest.approx(0.5, rel=1e-12)


@pytest.mark.parametrize("scheme, dist", list(itertools.product(("ls-2", "ls-T"), ("normal", "laplace", "uniform"))))
def test_optimal_foldable_schemes_reach_the_exact_optimum(scheme, dist):
    from lsqbq.analysis.exact import EXACT_RTOL, excess_over_lloyd_max

    mse, optimum, levels = excess_over_lloyd_max(scheme, dist, points=1 << 14)
    assert levels == get_scheme(scheme).levels and abs(mse / optimum - 1) <= EXACT_RTOL


def test_greedy_two_bits_is_measurably_above_the_optimum():
    from lsqbq.analysis.exact import EXACT_RTOL, excess_over_lloyd_max

    mse, optimum, _ = excess_over_lloyd_max("gf-2", "normal", points=1 << 14)
    assert mse / optimum - 1 > 1e4 * EXACT_RTOL  # about +11 %


def test_analysis_does_not_import_tables():
    """The dependency is one way: lsqbq.tables may import lsqbq.analysis, never the reverse."""
    import ast
    import subprocess
    import sys
    from pathlib import Path

    for path in Path(A.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""] + [a.name for a in node.names]
                assert not any(n == "tables" or n.startswith("tables.") or ".tables" in n for n in names), path
    code = "import sys, lsqbq.analysis.cli; print(any(m.startswith('lsqbq.tables') for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def _kmeans_brute(x, levels):
    """Optimal 1-D k-means by trying every split of the sorted sample into contiguous cells."""
    x = np.sort(x)
    best = math.inf
    for cuts in itertools.combinations(range(1, len(x)), levels - 1):
        cells = np.split(x, cuts)
        best = min(best, sum(((c - c.mean()) ** 2).sum() for c in cells))
    return best / len(x)


@pytest.mark.parametrize("seed", range(4))
def test_lloyd_max_sample_matches_brute_force_on_clustered_data(seed):
    g = np.random.default_rng(seed)
    x = np.concatenate([g.normal(c, 0.3, 4) for c in (-4.0, 0.0, 5.0)])
    code, err = A.lloyd_max(x, 3)
    assert err == pytest.approx(_kmeans_brute(x, 3), rel=1e-9)
    # err is the nearest-codeword error of the returned codebook
    q = code[np.abs(x[:, None] - code[None, :]).argmin(1)]
    assert err == pytest.approx(np.mean((x - q) ** 2), rel=1e-9)


def test_lloyd_max_never_beaten_by_a_foldable_scheme():
    x = A.synthetic_rows("laplace", 1, 3000, seed=3)
    for scheme in ("ls-1", "ls-T", "ls-2", "gf-2"):
        mse = float((x - lsqbq.quantize(x, scheme)).square().mean())
        assert A.lloyd_max(x.numpy().ravel(), get_scheme(scheme).levels)[1] <= mse + 1e-12


def test_reference_schemes_are_the_registered_official_searches():
    assert A.REFERENCE_SCHEMES == ("ls-2-official", "ls-T-official")
    assert [get_scheme(n).levels for n in A.REFERENCE_SCHEMES] == [4, 3]


def test_official_search_close_to_exact_ls2():
    x = A.synthetic_rows("normal", 16, 4608, seed=1)
    for exact_name, official_name in (("ls-2", "ls-2-official"), ("ls-T", "ls-T-official")):
        exact = float((x - quantize(x, exact_name)).square().mean())
        official = float((x - quantize(x, official_name)).square().mean())
        assert exact <= official  # the exact search is optimal ...
        assert official <= exact * 1.01  # ... and the every-3rd-element search is within 1 % (paper.md: <= 0.4 %)


def test_official_search_picks_a_subsample_value_and_recomputes_v2():
    x = A.synthetic_rows("normal", 3, 999, seed=2)
    v = fit_official_skip3(x).numpy()
    for row, (v1, v2) in zip(x.numpy(), v):
        sub = np.abs(row[::3])
        assert np.min(np.abs(sub - v1)) == 0.0  # v_1 is one of the sorted data values
        assert v2 == pytest.approx(np.mean(np.abs(np.abs(row) - v1)))  # v_2 over the full row


def test_official_ternary_edge_case_constant_row():
    # min|x| > mean|x| / 2: no interior candidate; mean/2 is added, so levels +-2v = +-c reproduce x exactly.
    x = torch.full((1, 30), -0.7, dtype=torch.float64)
    v = fit_official_skip3(x, ternary=True)
    assert float(v[0, 0]) == pytest.approx(0.35)
    assert torch.allclose(quantize(x, "ls-T-official"), x)


def test_error_rows_values():
    x = A.synthetic_rows("normal", 8, 20000, seed=0)
    rows = {r["scheme"]: r for r in A.error_rows("normal", [x])}
    assert list(rows) == [*A.ERROR_SCHEMES, *A.REFERENCE_SCHEMES]
    assert rows["fp"]["mse"] == 0.0 and rows["fp"]["levels"] == ""
    assert rows["ls-1"]["mse"] == pytest.approx(1 - 2 / math.pi, rel=0.02)
    assert rows["ls-2"]["mse"] == pytest.approx(0.1175, rel=0.02)
    assert rows["ls-T"]["mse"] == pytest.approx(0.1902, rel=0.02)
    assert rows["ls-2"]["mse"] < rows["gf-2"]["mse"]  # 0.118 vs 0.131 on N(0,1)
    assert rows["ls-2"]["mse"] <= rows["ls-2-official"]["mse"]
    assert rows["ls-2"]["levels"] == 4 and rows["ls-T"]["levels"] == 3 and rows["gf-4"]["levels"] == 16
    for r in rows.values():
        assert r["rel_error"] == pytest.approx(math.sqrt(r["mse"] / float(x.square().mean())), rel=1e-9)
        if r["levels"]:
            assert r["lloyd_max_mse"] <= r["mse"] * 1.001


def test_angle_rows():
    x = A.synthetic_rows("normal", 64, 2000, seed=5)
    rows = {r["scheme"]: r for r in A.angle_rows(["layer"], [x], ("ls-1", "ls-2", "gf-4"))}
    assert rows["ls-1"]["angle_deg"] == pytest.approx(37.06, abs=0.3)  # arccos(sqrt(2/pi)) for N(0,1)
    assert rows["gf-4"]["angle_deg"] < rows["ls-2"]["angle_deg"] < rows["ls-1"]["angle_deg"]
    for r in rows.values():
        assert 0 < r["angle_ci95"] < 0.5 and r["images"] == 64
        assert r["rel_error"] >= math.sin(math.radians(r["angle_deg"])) - 1e-3  # the distance to the ray, at least
    # ls-1's scale is the least-squares projection onto sign(x): the error is exactly the sine of the angle
    assert rows["ls-1"]["rel_error"] == pytest.approx(math.sin(math.radians(rows["ls-1"]["angle_deg"])), rel=0.01)


def test_activation_sites_are_signed_bn_outputs():
    from lsqbq.models import build

    for name in ("resnet_small", "lenet5"):
        model = build(name, num_classes=10, in_chans=1).train()  # BN normalises with batch statistics
        sites = A.activation_sites(model)
        assert sites, name
        assert all(isinstance(m, torch.nn.BatchNorm2d) and "shortcut" not in n for n, m in sites)
        names, acts = A.layer_inputs(model, [(torch.randn(4, 1, 28, 28), None)], images=4)
        assert names == [n for n, _ in sites] and len(acts) == len(sites) and all(a.shape[0] == 4 for a in acts)
        assert all((a < 0).any() for a in acts)  # signed: sign quantization is informative
        assert len(A.weight_rows(model)) == len(A.quantizable_layers(model))


def test_quantize_weights_changes_a_copy_only():
    from lsqbq.models import build

    model = build("lenet5", num_classes=10, in_chans=1)
    before = [m.weight.detach().clone() for _, m in A.quantizable_layers(model)]
    q = A.quantize_weights(model, "ls-1")
    for w0, (_, m), (_, mq) in zip(before, A.quantizable_layers(model), A.quantizable_layers(q)):
        assert torch.equal(m.weight, w0)
        rows = mq.weight.detach().reshape(mq.weight.shape[0], -1)
        assert (rows.abs() - rows.abs()[:, :1]).abs().max() < 1e-6  # ls-1: one magnitude per output channel


def test_error_command_writes_csv_and_markdown_rendered_from_it(tmp_path):
    prefixes = [tmp_path / "a" / "error", tmp_path / "b" / "error"]
    for prefix in prefixes:
        assert A.main(["error", "--rows", "3", "--n", "300", "--distributions", "normal", "uniform",
                       "--out", str(prefix)]) == 0
    df = pd.read_csv(prefixes[0].with_suffix(".csv"))
    assert list(df.source.unique()) == ["normal", "uniform"]
    assert set(A.REFERENCE_SCHEMES) <= set(df.scheme)
    md = prefixes[0].with_suffix(".md").read_text()
    assert md.startswith("# Quantization error") and "ls-2 (official skip-3)" in md and "| normal " in md
    for suffix in (".csv", ".md"):  # deterministic: the same command gives the same bytes
        assert prefixes[0].with_suffix(suffix).read_bytes() == prefixes[1].with_suffix(suffix).read_bytes()


def test_render_only_redraws_markdown_and_figure_from_the_csv(tmp_path):
    prefix = tmp_path / "angles"
    x = A.synthetic_rows("normal", 16, 500, seed=1)
    pd.DataFrame(A.angle_rows(["bn2"], [x])).to_csv(prefix.with_suffix(".csv"), index=False)
    assert A.main(["angles", "--render-only", "--out", str(prefix)]) == 0
    md, png = prefix.with_suffix(".md").read_bytes(), prefix.with_suffix(".png").read_bytes()
    assert b"| bn2 " in md and png[:4] == b"\x89PNG"
    prefix.with_suffix(".md").unlink()
    assert A.main(["angles", "--render-only", "--out", str(prefix)]) == 0
    assert prefix.with_suffix(".md").read_bytes() == md and prefix.with_suffix(".png").read_bytes() == png
    with pytest.raises(SystemExit):
        A.main(["angles", "--out", str(prefix)])  # computing needs a checkpoint


def _lenet(path, run_id: str, **model) -> Path:
    """A LeNet-5 checkpoint (``model``: config overrides, e.g. the student's schemes) with its metrics.json."""
    import json

    from lsqbq.checkpoint import FORMAT, build_model, save_atomic
    from lsqbq.config import from_dict, model_options, to_dict

    torch.manual_seed(0)
    cfg = from_dict({"model": {"name": "lenet5", **model}, "data": {"name": "fashion-mnist"}})
    opts = model_options(cfg, 10, 1)
    save_atomic({"format": FORMAT, "config": to_dict(cfg), "model_options": opts, "epoch": 1,
                 "model": build_model("lenet5", opts).state_dict()}, path)
    path.with_name("metrics.json").write_text(json.dumps({"run_id": run_id, "commit": "c", "config_hash": "h",
                                                          "data_hash": "d"}))
    return path


@pytest.fixture
def lenet_checkpoint(tmp_path, monkeypatch):
    """A LeNet-5 checkpoint with its metrics.json, and a synthetic test loader in place of the dataset."""
    from lsqbq import data

    path = _lenet(tmp_path / "run" / "checkpoint.pt", "r0")
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(8, 1, 28, 28, generator=g), torch.randint(0, 10, (8,), generator=g)) for _ in range(3)]
    monkeypatch.setattr(data, "build_loaders", lambda cfg: (None, batches))
    return path


def test_ptq_and_angles_commands_on_a_checkpoint(lenet_checkpoint, tmp_path):
    ptq, angles = tmp_path / "out" / "ptq", tmp_path / "out" / "angles"
    assert A.main(["ptq", "--checkpoint", str(lenet_checkpoint), "--out", str(ptq), "--schemes", "fp", "ls-2"]) == 0
    df = pd.read_csv(ptq.with_suffix(".csv"), dtype={"k_w": str, "k_a": str})
    assert list(df.w_quant) == ["fp", "ls-2"] and list(df.k_w) == ["32", "2"] and (df.run_id == "r0").all()
    assert A.main(["angles", "--checkpoint", str(lenet_checkpoint), "--out", str(angles), "--images", "16"]) == 0
    df = pd.read_csv(angles.with_suffix(".csv"))
    assert set(df.layer) == {"bn2"} and (df.images == 16).all() and len(df) == len(A.ANGLE_SCHEMES)
    assert angles.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"
    assert "| bn2 " in angles.with_suffix(".md").read_text()


def test_angles_command_measures_the_students_clamped_quantizer_inputs(lenet_checkpoint, tmp_path):
    student = _lenet(tmp_path / "student" / "checkpoint.pt", "r1", x_quant="ls-2", w_quant="ls-1", clamp=0.5)
    prefix = tmp_path / "out" / "angles_fp_fp_s0"
    assert A.main(["angles", "--checkpoint", str(lenet_checkpoint), "--students", str(student), "--out", str(prefix),
                   "--images", "12", "--schemes", "ls-1", "gf-2", "ls-2"]) == 0
    df = pd.read_csv(prefix.with_suffix(".csv"))
    teacher, stud = df[df.input == "teacher"], df[df.input == "student"]
    assert set(teacher.input_run) == {"fp/fp"} and set(stud.input_run) == {"ls-2/ls-1"}
    assert (teacher.run_id == "r0").all() and (stud.run_id == "r1").all() and (df.images == 12).all()
    # what the student's quantizer sees: the input of its quantized layer, clamped (independent re-computation)
    from lsqbq.checkpoint import load_model
    from lsqbq import data

    model = load_model(str(student)).model.eval()
    (name, layer), = A.quantizable_layers(model)
    seen = []
    handle = layer.register_forward_pre_hook(lambda m, inp: seen.append(inp[0].flatten(1).clamp(-0.5, 0.5)))
    x = torch.cat([b for b, _ in data.build_loaders(None)[1]])[:12]
    with torch.no_grad():
        model(x)
    handle.remove()
    rows = seen[0].double()
    assert set(stud.layer) == {name} and rows.abs().max() <= 0.5
    expected = A.measures.row_angles(rows, "ls-2")
    got = stud[stud.scheme == "ls-2"].iloc[0]
    assert got.angle_deg == pytest.approx(expected.mean()) and got.angle_std == pytest.approx(expected.std(ddof=1))
    kurt = ((rows - rows.mean(1, keepdim=True)) ** 4).mean(1) / rows.var(1, unbiased=False) ** 2 - 3
    assert got.excess_kurtosis == pytest.approx(float(kurt.mean()))
    md = prefix.with_suffix(".md").read_text()
    assert "| student ls-2/ls-1 " in md and "| teacher fp/fp " in md


def test_tail_measures_against_scipy_and_the_normal():
    from scipy import stats

    x = A.synthetic_rows("laplace", 8, 4000, seed=3)
    kurt, near = A.measures.tail_measures(x)
    xs = x.numpy()
    assert kurt == pytest.approx(np.mean([stats.kurtosis(r) for r in xs]))  # Fisher, biased: the same estimator
    assert near == pytest.approx(np.mean([(np.abs(r) < 0.1 * r.std()).mean() for r in xs]))
    kurt_n, near_n = A.measures.tail_measures(A.synthetic_rows("normal", 8, 20000, seed=4))
    assert abs(kurt_n) < 0.1 and near_n == pytest.approx(2 * stats.norm.cdf(0.1) - 1, abs=0.005)
    assert all(math.isnan(v) for v in A.measures.tail_measures(torch.ones(3, 5)))  # constant rows: no tail


@pytest.mark.parametrize("p", [0.0, 0.5, 0.9])
def test_optimal_beats_greedy_at_equal_bits_on_any_rows(p):
    from lsqbq.analysis.sweep import spike_slab_rows

    x = spike_slab_rows(p, 16, 1500, seed=7)
    assert float(x.var()) == pytest.approx(1.0, rel=0.1)  # unit variance whatever the spike weight
    ang = {s: A.measures.row_angles(x, s) for s in ("ls-1", "ls-T", "gf-2", "ls-2", "gf-4")}
    assert (ang["ls-2"] <= ang["gf-2"] + 1e-9).all() and (ang["ls-T"] <= ang["ls-1"] + 1e-9).all()  # every row
    if p == 0.0:  # Gaussian rows: 16 greedy levels are closer than 4 optimal ones
        assert ang["gf-4"].mean() < ang["ls-2"].mean() - 5
    elif p == 0.9:  # sparse rows: the 4 optimal levels are
        assert ang["ls-2"].mean() < ang["gf-4"].mean() - 5


def test_sweep_command_is_deterministic_and_finds_the_crossing(tmp_path):
    from lsqbq.analysis.sweep import crossing, spike_slab_kurtosis

    a, b = tmp_path / "a" / "sweep", tmp_path / "b" / "sweep"
    for prefix in (a, b):
        assert A.main(["sweep", "--out", str(prefix), "--p", "0", "0.3", "0.6", "0.9", "--rows", "8", "--n", "4000",
                       "--schemes", "ls-2", "gf-4"]) == 0
    for suffix in (".csv", ".md", ".png"):
        assert a.with_suffix(suffix).read_bytes() == b.with_suffix(suffix).read_bytes()
    df = pd.read_csv(a.with_suffix(".csv"))
    wide = df.pivot(index="p", columns="scheme", values="angle_deg")
    assert wide.loc[0.0, "gf-4"] < wide.loc[0.0, "ls-2"] and wide.loc[0.9, "ls-2"] < wide.loc[0.9, "gf-4"]
    p = crossing(df)
    i = int(np.argmax((wide["ls-2"] - wide["gf-4"]).to_numpy() < 0))  # the first point where ls-2 is below
    assert wide.index[i - 1] < p <= wide.index[i]
    assert f"at spike weight p = {p:.2f}" in a.with_suffix(".md").read_text()
    tails = df.groupby("p")["excess_kurtosis"].first()
    for q, k in tails.items():  # the sample's tail follows the density's
        assert k == pytest.approx(spike_slab_kurtosis(q), abs=0.15 + 0.2 * spike_slab_kurtosis(q))
    assert crossing(df[df.p <= 0.3]) != crossing(df[df.p <= 0.3])  # never below: NaN


def test_sweep_rejects_a_spike_weight_outside_the_unit_interval(tmp_path, capsys):
    prefix = tmp_path / "sweep"
    with pytest.raises(SystemExit) as e:
        A.main(["sweep", "--out", str(prefix), "--p", "0", "1.0"])
    assert e.value.code == 2 and "--p: every spike weight must be in [0, 1), got 0.0 1.0" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        A.main(["sweep", "--out", str(prefix), "--rows", "1"])
    assert e.value.code == 2 and "--rows and --n must be at least 2" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())  # nothing written
