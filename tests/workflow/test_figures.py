"""lsqbq.tables.figures: every figure is drawn from its CSV alone, deterministically, with labels that do not
collide and legends outside the data."""
import itertools

import matplotlib
import pandas as pd
import pytest

from lsqbq.tables import figures as F

matplotlib.use("Agg")

PNG = b"\x89PNG\r\n\x1a\n"


def _boxes_disjoint(artists, renderer):
    boxes = [a.get_window_extent(renderer) for a in artists if a.get_text()]
    return all(not a.overlaps(b) for a, b in itertools.combinations(boxes, 2))


@pytest.fixture
def pareto_csv(tmp_path):
    rows = []
    for model in ("lenet5", "resnet_small"):
        for (x, w, kernel, ms, top1, std, front) in (
                ("ls-1", "ls-1", "1x1", 2.7, 88.4, 0.5, False), ("ls-T", "ls-1", "Tx1", 1.55, 89.1, 0.1, True),
                ("gf-2", "ls-1", "2x1", 1.85, 89.5, 0.3, True), ("ls-2", "ls-1", "2x1", 1.85, 89.5, 0.2, False),
                ("gf-3", "ls-1", "3x1", float("nan"), 89.8, 0.4, False), ("fp", "ls-1", "fp32", 30.3, 90.2, 0.3, False),
                ("fp", "ls-T", "fp32", 30.3, 90.5, 0.2, False), ("fp", "ls-2", "fp32", 30.3, 90.6, 0.3, False),
                ("fp", "fp", "fp32", 30.3, 91.0, 0.2, True)):
            rows.append({"model": model, "x_quant": x, "w_quant": w, "k_a": "", "k_w": "", "top1_mean": top1,
                         "top1_std": std, "runs_on": kernel, "scale_mode": "fitted", "ms_b1": ms,
                         "ms_b256": 100 * ms, "stored_ms_b1": ms / 2, "stored_ms_b256": 50 * ms,
                         "pareto": front})
    path = tmp_path / "pareto.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


@pytest.fixture
def kernels_csv(tmp_path):
    rows = [{"kind": "conv", "layer": layer, "batch": 1, "threads": 1, "scheme": s, "ms": ms * (1 + i)}
            for i, layer in enumerate(("64@56x56", "128@28x28", "256@14x14", "512@7x7"))
            for s, ms in (("fp32", 2.0), ("int8", 0.6), ("1x1", 0.3), ("2x1", 0.35), ("Tx1", 0.2))]
    path = tmp_path / "kernels.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


@pytest.fixture
def angles_csv(tmp_path):
    rows = []
    for model, layers in (("resnet_small", [f"stages.{i}.0.bn1" for i in range(4)]), ("lenet5", ["bn2"])):
        for li, layer in enumerate(layers):
            for s, a in (("ls-1", 37.0), ("gf-2", 21.5), ("ls-2", 20.8), ("gf-4", 11.0), ("ls-T", 26.5)):
                rows.append({"model": model, "seed": 0, "layer_index": li, "layer": layer, "scheme": s, "images": 128,
                             "angle_deg": a + 0.3 * li, "angle_ci95": 0.4, "rel_error": a / 60, "rel_error_ci95": 0.01})
    path = tmp_path / "angles.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


@pytest.mark.parametrize("kind", ["pareto", "kernels", "angles"])
def test_each_figure_is_drawn_from_its_csv(kind, request, tmp_path):
    csv = request.getfixturevalue(f"{kind}_csv")
    plot = getattr(F, f"plot_{kind}")
    arg = [csv] if kind == "angles" else csv
    a, b = plot(arg, tmp_path / "a.png"), plot(arg, tmp_path / "b.png")
    assert a.read_bytes()[:8] == PNG and a.stat().st_size > 20_000
    assert a.read_bytes() == b.read_bytes()  # the same CSV gives the same bytes
    df = pd.read_csv(csv)
    col = {"pareto": "top1_mean", "kernels": "ms", "angles": "angle_deg"}[kind]
    df[col] = df[col] * 0.9
    df.to_csv(csv, index=False)
    assert plot(arg, tmp_path / "c.png").read_bytes() != a.read_bytes()  # and another CSV another figure


def test_pareto_labels_and_ticks_do_not_collide(pareto_csv):
    fig = F.draw_pareto(pareto_csv)
    renderer = fig.canvas.get_renderer()
    for ax in fig.axes:
        assert len([t for t in ax.texts if t.get_text()]) == 8  # every pair with a latency is labelled
        assert _boxes_disjoint(ax.texts, renderer)
        assert _boxes_disjoint(ax.get_xticklabels(), renderer)
        assert "ms" in ax.get_xlabel() and ax.get_ylabel() == "top-1 accuracy (%)"
        inside = ax.get_window_extent(renderer)
        assert all(inside.contains(*t.get_window_extent(renderer).min) for t in ax.texts)


def test_kernels_ticks_are_readable(kernels_csv):
    fig = F.draw_kernels(kernels_csv)
    ax = fig.axes[0]
    renderer = fig.canvas.get_renderer()
    assert [t.get_text() for t in ax.get_xticklabels()][0] == "64 ch\n56×56"
    assert _boxes_disjoint(ax.get_xticklabels(), renderer)
    assert "ms" in ax.get_ylabel() and "pixels" in ax.get_xlabel()
    assert not ax.get_legend().get_window_extent(renderer).overlaps(ax.get_window_extent(renderer))


def test_angles_name_layers_and_draw_a_single_layer_as_a_dot_plot(angles_csv):
    fig = F.draw_angles([angles_csv])
    renderer = fig.canvas.get_renderer()
    deep, _, one, _ = fig.axes
    assert [t.get_text() for t in deep.get_xticklabels()] == [f"stages.{i}.0.bn1" for i in range(4)]
    assert [t.get_text() for t in one.get_yticklabels()] == ["ls-1", "ls-T", "gf-2", "ls-2", "gf-4"]
    assert "bn2" in one.get_title()
    assert deep.collections  # the 95 % bands
    legend = fig.legends[0]
    assert all(not legend.get_window_extent(renderer).overlaps(ax.get_window_extent(renderer)) for ax in fig.axes)
