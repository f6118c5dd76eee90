"""Result tables and figures: per-run ``metrics.json`` files -> markdown + CSV, with provenance.

Usage::

    lsqbq tables --dataset fashion-mnist --out results/tables/fashion-mnist \\
        --train results/train/fashion-mnist/*/*/s*/metrics.json \\
        [--evaluate results/evaluate/...json] [--ptq results/analysis/.../ptq_fp_fp_s0.csv ...] \\
        [--error results/analysis/.../error.csv ...] [--angles results/analysis/.../angles.csv ...] \\
        [--kernels results/bench/kernels.csv] [--paper lsqbq/reference/paper_numbers.csv]
    lsqbq tables --from-mlflow --tracking-uri sqlite:///mlflow.db --experiment lsqbq-default-fashion-mnist \\
        --dataset fashion-mnist --out results/tables/from-mlflow

Outputs in ``--out``:
    ``qat.md`` / ``qat.csv``   the paper's main table: one row per (model, activation scheme, weight scheme), top-1 /
                              top-5 as mean ± sample std over seeds, the paper's ImageNet (V1, official README) and
                              CIFAR-100 (README) numbers beside ours and the differences (ours - paper);
    ``qat_runs.csv``          one row per run (seed) with its provenance: commit, config hash, data hash, MLflow run id;
    ``ptq.md`` / ``ptq.csv``  post-training weight quantization of the fp models (paper V1 Table 1, top rows);
    ``error.md`` / ``error.csv``, ``angles.png``, ``pareto.md`` / ``pareto.csv`` / ``pareto.png`` when their inputs are given.

``--from-mlflow`` rebuilds ``qat.md`` / ``qat.csv`` from the MLflow store alone (latest finished training run per
model, schemes and seed in the experiment); it equals the workflow's table when the store holds the workflow's runs.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path
from typing import Iterable, Sequence

__all__ = ["PROVENANCE", "load_runs", "runs_from_mlflow", "summarize", "qat_table", "ptq_table", "pareto_table",
           "mean_std", "fmt_mean_std", "bits_order", "main"]

PROVENANCE = ("commit", "config_hash", "data_hash", "run_id")
PAPER_COLUMNS = (  # (column prefix, source in paper_numbers.csv, fallback source)
    ("v1_imagenet", "V1 Table 2", "V1 Table 1"),
    ("readme_imagenet", "README ImageNet", None),
    ("readme_cifar100", "README CIFAR-100", None),
)
PAPER_TITLES = {"v1_imagenet": "V1 ImageNet", "readme_imagenet": "README ImageNet", "readme_cifar100": "README CIFAR-100"}
DEFAULT_PAPER = Path(__file__).with_name("reference") / "paper_numbers.csv"


# --------------------------------------------------------------------------------------------- numbers


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1 in the denominator; 0 for a single value)."""
    vals = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not vals:
        return float("nan"), float("nan")
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)


def fmt_mean_std(mean: float, std: float, n: int, digits: int = 2) -> str:
    """``"91.23 ± 0.15"``; a single run prints its value alone."""
    if math.isnan(mean):
        return ""
    return f"{mean:.{digits}f}" if n <= 1 else f"{mean:.{digits}f} ± {std:.{digits}f}"


def bits_order(label: str) -> float:
    """Sort key of a bit-width label as printed in the paper: 1 < T < 2 < 3 < ... < 32."""
    return 1.5 if label == "T" else float(label)


def _label(scheme: str) -> str:
    from .schemes import get_scheme

    return get_scheme(scheme).label


def _row_key(x_quant: str, w_quant: str) -> tuple:
    # Paper order: by activation bits, then weight bits, greedy before least squares at equal bits.
    return (bits_order(_label(x_quant)), bits_order(_label(w_quant)), 0 if x_quant.startswith("gf") else 1, x_quant)


# ------------------------------------------------------------------------------------------------ runs


def _pct(v) -> float:
    """Accuracy in percent as stored by lsqbq.train (NaN when missing)."""
    return float("nan") if v is None else float(v)


def _run_from_path(path: Path) -> dict:
    """``.../{dataset}/{model}/{x_quant}_{w_quant}/s{seed}/metrics.json`` -> the run's identity."""
    seed_dir, pair_dir, model_dir, dataset_dir = path.parent, path.parent.parent, path.parent.parent.parent, path.parents[3]
    x_quant, _, w_quant = pair_dir.name.partition("_")
    if not seed_dir.name.startswith("s") or not w_quant:
        raise ValueError(f"{path}: expected .../{{dataset}}/{{model}}/{{x_quant}}_{{w_quant}}/s{{seed}}/metrics.json")
    return {"dataset": dataset_dir.name, "model": model_dir.name, "x_quant": x_quant, "w_quant": w_quant,
            "seed": int(seed_dir.name[1:])}


def load_runs(train: Iterable[str | Path], evaluate: Iterable[str | Path] = ()) -> list[dict]:
    """One dict per training run: identity (from the path), top1/top5 (percent) and provenance.

    ``evaluate`` files (same layout under results/evaluate/) add ``top1_eval`` / ``top5_eval``: the checkpoint
    re-evaluated from disk.
    """
    evals = {}
    for p in evaluate:
        p = Path(p)
        ident = _run_from_path(p)
        evals[(ident["model"], ident["x_quant"], ident["w_quant"], ident["seed"])] = json.loads(p.read_text())
    runs = []
    for p in train:
        p = Path(p)
        m = json.loads(p.read_text())
        run = _run_from_path(p)
        run.update(top1=_pct(m.get("top1")), top5=_pct(m.get("top5")), epochs=m.get("epochs"))
        for k in PROVENANCE:
            run[k] = str(m.get(k, "") or "")
        e = evals.get((run["model"], run["x_quant"], run["w_quant"], run["seed"]))
        if e is not None:
            run["top1_eval"], run["top5_eval"] = _pct(e.get("top1")), _pct(e.get("top5"))
        runs.append(run)
    return runs


def runs_from_mlflow(tracking_uri: str, experiment: str, dataset: str) -> list[dict]:
    """The same runs as :func:`load_runs`, read from the MLflow store alone.

    Per (model, x_quant, w_quant, seed) the latest FINISHED training run of ``experiment`` is taken (evaluation-only
    runs, tagged ``mode=eval-only``, are skipped). Identity comes from the run's tags, accuracy from the
    ``final_top1`` / ``final_top5`` metrics and provenance from the tags (``git_commit``, ``config_hash``,
    ``data_hash``) and the run id.
    """
    from . import tracking  # the only importer of mlflow

    client = tracking.client(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise ValueError(f"no MLflow experiment {experiment!r} in {tracking_uri}")
    found: dict[tuple, object] = {}
    for r in client.search_runs([exp.experiment_id], filter_string="attributes.status = 'FINISHED'",
                                max_results=50000, order_by=["attributes.start_time ASC"]):
        t, m = r.data.tags, r.data.metrics
        if t.get("mode") == "eval-only" or "final_top1" not in m or "model" not in t:
            continue
        key = (t["model"], t["x_quant"], t["w_quant"], int(t["seed"]))
        found[key] = r  # ascending start time: the latest wins
    runs = []
    for (model, x, w, seed), r in found.items():
        t, m = r.data.tags, r.data.metrics
        runs.append({"dataset": dataset, "model": model, "x_quant": x, "w_quant": w, "seed": seed,
                     "top1": _pct(m.get("final_top1")), "top5": _pct(m.get("final_top5")),
                     "epochs": r.data.params.get("epochs"), "commit": t.get("git_commit", ""),
                     "config_hash": t.get("config_hash", ""), "data_hash": t.get("data_hash", ""),
                     "run_id": r.info.run_id})
    return runs


# ---------------------------------------------------------------------------------------------- tables


def _paper_rows(path: str | Path | None) -> list[dict]:
    import csv

    path = Path(path or DEFAULT_PAPER)
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _paper_lookup(paper: list[dict], training: str, x_quant: str, w_quant: str, source: str) -> dict | None:
    for r in paper:
        if (r["training"], r["kind"], r["x_quant"], r["w_quant"], r["source"]) == (training, "ours", x_quant, w_quant, source):
            if "Opt*" in r["method"]:
                continue  # the 2x-batch variant is a different recipe
            return r
    return None


def _float(s) -> float:
    try:
        return float(s)
    except (TypeError, ValueError):
        return float("nan")


def summarize(runs: list[dict]) -> list[dict]:
    """Group runs by (dataset, model, x_quant, w_quant): mean ± std of top1/top5 and joined provenance."""
    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        groups.setdefault((r["dataset"], r["model"], r["x_quant"], r["w_quant"]), []).append(r)
    rows = []
    for (dataset, model, x, w), rs in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1], _row_key(kv[0][2], kv[0][3]))):
        rs = sorted(rs, key=lambda r: r["seed"])
        row = {"dataset": dataset, "model": model, "k_a": _label(x), "k_w": _label(w), "x_quant": x, "w_quant": w,
               "n_seeds": len(rs), "seeds": ";".join(str(r["seed"]) for r in rs)}
        for metric in ("top1", "top5"):
            row[f"{metric}_mean"], row[f"{metric}_std"] = mean_std([r[metric] for r in rs])
        for k in PROVENANCE:
            vals = [r.get(k, "") for r in rs]
            row[k] = ";".join(dict.fromkeys(vals)) if k == "commit" else ";".join(vals)
        rows.append(row)
    return rows


def qat_table(runs: list[dict], paper: list[dict]) -> list[dict]:
    """:func:`summarize` plus, per row, the paper's numbers and ours minus theirs (top-1, top-5)."""
    rows = summarize(runs)
    for row in rows:
        for prefix, source, fallback in PAPER_COLUMNS:
            p = _paper_lookup(paper, "qat", row["x_quant"], row["w_quant"], source)
            if p is None and fallback:
                p = _paper_lookup(paper, "qat", row["x_quant"], row["w_quant"], fallback)
            for metric in ("top1", "top5"):
                theirs = _float(p[metric]) if p else float("nan")
                row[f"{prefix}_{metric}"] = theirs
                row[f"diff_{prefix}_{metric}"] = row[f"{metric}_mean"] - theirs
            row[f"{prefix}_source"] = p["source"] if p else ""
    return rows


def _md_qat(rows: list[dict], title: str) -> str:
    head = ["model", "k^a", "k^w", "activations", "weights", "seeds", "top-1 (%)", "top-5 (%)"]
    for prefix, _, _ in PAPER_COLUMNS:
        head += [f"{PAPER_TITLES[prefix]} top-1", "Δ"]
    head += ["commit", "config hash", "data hash", "MLflow run ids"]
    lines = [f"# {title}", "",
             "Mean ± sample std over seeds. Paper columns: V1 ImageNet (Table 2, else Table 1), the official README's "
             "ImageNet and CIFAR-100 runs (ResNet-18); Δ = ours - paper (different dataset and model: read the gaps "
             "between rows, not the absolute values).", "",
             "| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    short = lambda s: ";".join(v[:8] for v in s.split(";")) if s else ""  # noqa: E731
    for r in rows:
        cells = [r["model"], r["k_a"], r["k_w"], r["x_quant"], r["w_quant"], str(r["n_seeds"]),
                 fmt_mean_std(r["top1_mean"], r["top1_std"], r["n_seeds"]),
                 fmt_mean_std(r["top5_mean"], r["top5_std"], r["n_seeds"])]
        for prefix, _, _ in PAPER_COLUMNS:
            theirs, diff = r[f"{prefix}_top1"], r[f"diff_{prefix}_top1"]
            cells += ["" if math.isnan(theirs) else f"{theirs:.1f}", "" if math.isnan(diff) else f"{diff:+.1f}"]
        cells += [short(r["commit"]), short(r["config_hash"]), short(r["data_hash"]), short(r["run_id"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def ptq_table(ptq_files: Iterable[str | Path], paper: list[dict]) -> list[dict]:
    """Post-training quantization CSVs (one per model and seed, from ``lsqbq analyze ptq``) -> mean ± std per
    (model, weight scheme), with the paper's V1 Table 1 post-training numbers beside them."""
    import pandas as pd

    frames = []
    for f in ptq_files:
        f = Path(f)
        df = pd.read_csv(f, dtype={"k_w": str, "k_a": str, "commit": str, "config_hash": str, "data_hash": str, "run_id": str})
        df["model"] = f.parent.name
        seed = f.stem.rsplit("_s", 1)[-1]
        df["seed"] = int(seed) if seed.isdigit() else 0
        frames.append(df)
    if not frames:
        return []
    df = pd.concat(frames, ignore_index=True).fillna({k: "" for k in PROVENANCE})
    rows = []
    for (model, w), g in df.groupby(["model", "w_quant"], sort=False):
        g = g.sort_values("seed")
        t1, s1 = mean_std(g["top1"].tolist())
        t5, s5 = mean_std(g["top5"].tolist())
        p = _paper_lookup(paper, "post", "fp", w, "V1 Table 1") if w != "fp" else _paper_lookup(paper, "qat", "fp", "fp", "V1 Table 1")
        theirs = _float(p["top1"]) if p else float("nan")
        rows.append({"model": model, "k_a": "32", "k_w": _label(w), "w_quant": w, "n_seeds": len(g),
                     "top1_mean": t1, "top1_std": s1, "top5_mean": t5, "top5_std": s5,
                     "v1_imagenet_top1": theirs, "diff_v1_imagenet_top1": t1 - theirs,
                     **{k: ";".join(str(v) for v in g[k].tolist()) for k in PROVENANCE if k in g}})
    order = {"fp": (99, 0)}
    rows.sort(key=lambda r: (r["model"], order.get(r["w_quant"], (bits_order(r["k_w"]), 0 if r["w_quant"].startswith("gf") else 1))))
    return rows


def _md_simple(rows: list[dict], columns: Sequence[tuple[str, str]], title: str, note: str = "") -> str:
    lines = [f"# {title}", ""]
    if note:
        lines += [note, ""]
    lines += ["| " + " | ".join(t for _, t in columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for r in rows:
        cells = []
        for key, _ in columns:
            v = r.get(key, "")
            if callable(key):
                v = key(r)
            if isinstance(v, float):
                v = "" if math.isnan(v) else str(int(v)) if v.is_integer() and abs(v) < 1e6 else f"{v:.2f}"
            cells.append(str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


KERNEL_OF = {("1", "1"): "1x1", ("2", "1"): "2x1", ("2", "2"): "2x2", ("T", "1"): "Tx1"}


def pareto_table(qat_rows: list[dict], kernels_csv: str | Path) -> list[dict]:
    """Accuracy of every QAT row beside the measured latency of the kernel that would run it.

    ``kernels.csv`` comes from ``lsqbq bench kernels``: one row per (kind, layer, batch, threads, scheme) with
    ``scheme`` in fp32 / int8 / 1x1 / 2x1 / 2x2 / Tx1 (k^a x k^w bit planes) and ``ms``. The latency of a scheme
    is the sum, over the ResNet-18 3x3 layer shapes measured for every scheme, of the end-to-end conv latency
    (``kind == "conv"``; GEMMs when no conv was timed) at batch 1 and 1 thread: the headline setting.
    Activations in full precision run the fp32 conv; bit widths without a kernel (gf-3) get no latency.
    A row is on the Pareto front of its model when no other row is at least as fast and more accurate, or
    faster and at least as accurate.
    """
    import pandas as pd

    k = pd.read_csv(kernels_csv)
    if "ms" not in k and "seconds" in k:
        k["ms"] = 1e3 * k["seconds"]
    for col, val in (("batch", 1), ("threads", 1)):
        if col in k and (k[col] == val).any():
            k = k[k[col] == val]
    if "kind" in k:
        kind = "conv" if (k["kind"] == "conv").any() else "gemm"
        k = k[k["kind"] == kind]
    else:
        kind = "?"
    schemes = set(k["scheme"].astype(str))
    layers = set.intersection(*(set(g["layer"]) for _, g in k.groupby("scheme"))) if len(k) else set()
    k = k[k["layer"].isin(layers)]
    total = k.groupby("scheme")["ms"].sum().to_dict()
    rows = []
    for q in qat_rows:
        label = "fp32" if q["k_a"] == "32" else KERNEL_OF.get((q["k_a"], q["k_w"]))
        ms = float(total[label]) if label in schemes else float("nan")
        rows.append({"model": q["model"], "x_quant": q["x_quant"], "w_quant": q["w_quant"], "k_a": q["k_a"],
                     "k_w": q["k_w"], "top1_mean": q["top1_mean"], "top1_std": q["top1_std"],
                     "kernel": label or "", "latency_ms": ms, "latency_of": f"{kind}, {len(layers)} layers, batch 1, 1 thread"})
    for r in rows:
        same = [o for o in rows if o["model"] == r["model"] and not math.isnan(o["latency_ms"])]
        r["pareto"] = (not math.isnan(r["latency_ms"])) and not any(
            (o["latency_ms"] <= r["latency_ms"] and o["top1_mean"] > r["top1_mean"])
            or (o["latency_ms"] < r["latency_ms"] and o["top1_mean"] >= r["top1_mean"]) for o in same)
    return rows


def _plot_pareto(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(r["model"] for r in rows))
    fig, axes = plt.subplots(1, len(models), figsize=(5.5 * len(models), 4.2), squeeze=False)
    for ax, model in zip(axes[0], models):
        rs = [r for r in rows if r["model"] == model and not math.isnan(r["latency_ms"])]
        for r in rs:
            ax.errorbar(r["latency_ms"], r["top1_mean"], yerr=r["top1_std"], fmt="o" if r["pareto"] else "x",
                        capsize=3)
            ax.annotate(f"{r['x_quant']}/{r['w_quant']}", (r["latency_ms"], r["top1_mean"]), fontsize=8,
                        xytext=(4, 4), textcoords="offset points")
        front = sorted((r for r in rs if r["pareto"]), key=lambda r: r["latency_ms"])
        if front:
            ax.plot([r["latency_ms"] for r in front], [r["top1_mean"] for r in front], "--", alpha=0.5)
        ax.set_xscale("log")
        ax.set_xlabel("measured latency of the ResNet-18 3x3 convs (ms, batch 1, 1 thread, log scale)")
        ax.set_ylabel("top-1 accuracy (%)")
        ax.set_title(model)
        ax.grid(alpha=0.3)
    fig.suptitle("Accuracy vs bitwise-kernel latency per scheme (o: Pareto front)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _plot_angles(files: Sequence[str | Path], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    fig, axes = plt.subplots(len(files), 2, figsize=(11, 3.6 * len(files)), squeeze=False)
    for row, f in zip(axes, files):
        df = pd.read_csv(f)
        for scheme, g in df.groupby("scheme", sort=False):
            for ax, key, ci in ((row[0], "angle_deg", "angle_ci95"), (row[1], "rel_error", "rel_error_ci95")):
                ax.plot(g["layer_index"], g[key], marker="o", label=scheme)
                ax.fill_between(g["layer_index"], g[key] - g[ci], g[key] + g[ci], alpha=0.2)
        row[0].set_ylabel(f"{Path(f).parent.name}\nangle (degrees)")
        row[1].set_ylabel("||x - x_q|| / ||x||")
        for ax in row:
            ax.set_xlabel("quantized layer")
            ax.grid(alpha=0.3)
        row[0].legend(fontsize=8, title="scheme")
    fig.suptitle("Quantized activations of the trained fp models: angle and relative error per layer (95% CI)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _write_csv(rows: list[dict], path: Path) -> None:
    import pandas as pd

    pd.DataFrame(rows).to_csv(path, index=False)


# ---------------------------------------------------------------------------------------------- command


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lsqbq tables", description="Build result tables and figures.")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--dataset", required=True, help="dataset name shown in the titles")
    p.add_argument("--train", nargs="*", default=[], help="results/train/.../metrics.json of every run")
    p.add_argument("--evaluate", nargs="*", default=[], help="results/evaluate/.../metrics.json (re-evaluations)")
    p.add_argument("--ptq", nargs="*", default=[], help="post-training CSVs from `lsqbq analyze ptq`")
    p.add_argument("--error", nargs="*", default=[], help="quantization-error CSVs from `lsqbq analyze error`")
    p.add_argument("--angles", nargs="*", default=[], help="angle CSVs from `lsqbq analyze angles`")
    p.add_argument("--kernels", default=None, help="results/bench/kernels.csv for the accuracy-latency figure")
    p.add_argument("--paper", default=None, help="paper numbers CSV (default: the packaged reference)")
    p.add_argument("--from-mlflow", action="store_true", help="build the QAT table from the MLflow store alone")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (with --from-mlflow)")
    p.add_argument("--experiment", default=None, help="MLflow experiment (with --from-mlflow)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    paper = _paper_rows(args.paper)
    if args.from_mlflow:
        import os

        uri = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db"
        if not args.experiment:
            print("lsqbq tables: --from-mlflow needs --experiment", file=sys.stderr)
            return 2
        runs = runs_from_mlflow(uri, args.experiment, args.dataset)
    else:
        runs = load_runs(args.train, args.evaluate)
    if not runs:
        print("lsqbq tables: no runs found", file=sys.stderr)
        return 1
    title = f"Quantization-aware training on {args.dataset}: top-1 / top-5 accuracy"
    qat = qat_table(runs, paper)
    _write_csv(qat, out / "qat.csv")
    (out / "qat.md").write_text(_md_qat(qat, title))
    if args.from_mlflow:
        return 0
    _write_csv(sorted(runs, key=lambda r: (r["model"], _row_key(r["x_quant"], r["w_quant"]), r["seed"])),
               out / "qat_runs.csv")
    if args.ptq:
        rows = ptq_table(args.ptq, paper)
        _write_csv(rows, out / "ptq.csv")
        cols = [("model", "model"), ("k_w", "k^w"), ("w_quant", "weights"), ("n_seeds", "seeds"),
                (lambda r: fmt_mean_std(r["top1_mean"], r["top1_std"], r["n_seeds"]), "top-1 (%)"),
                (lambda r: fmt_mean_std(r["top5_mean"], r["top5_std"], r["n_seeds"]), "top-5 (%)"),
                (lambda r: "" if math.isnan(r["v1_imagenet_top1"]) else f"{r['v1_imagenet_top1']:.1f}", "V1 ImageNet top-1"),
                (lambda r: "" if math.isnan(r["diff_v1_imagenet_top1"]) else f"{r['diff_v1_imagenet_top1']:+.1f}", "Δ")]
        (out / "ptq.md").write_text(_md_simple(
            rows, cols, f"Post-training weight quantization of the fp models on {args.dataset} (activations fp)",
            "Mean ± std over the fp models of every seed; V1 ImageNet = paper V1 Table 1 (ResNet-18)."))
    if args.error:
        import pandas as pd

        frames = []
        for f in args.error:
            df = pd.read_csv(f)
            df.insert(0, "model", Path(f).parent.name)
            frames.append(df)
        df = pd.concat(frames, ignore_index=True)
        synthetic = df["source"].isin(["normal", "laplace", "uniform"])
        df.loc[synthetic, "model"] = "-"
        df = df.drop_duplicates(subset=["model", "source", "scheme"])
        df.to_csv(out / "error.csv", index=False)
        rows = df.to_dict("records")
        cols = [("model", "model"), ("source", "data"), ("scheme", "scheme"), ("levels", "levels"),
                (lambda r: f"{r['mse']:.4g}", "MSE"), (lambda r: f"{r['rel_error']:.4f}", "relative error"),
                (lambda r: "" if not r["lloyd_max_mse"] else f"{r['lloyd_max_mse']:.4g}", "Lloyd-Max MSE"),
                (lambda r: "" if not r["lloyd_max_mse"] else f"{100 * r['excess']:+.1f}%", "vs Lloyd-Max")]
        (out / "error.md").write_text(_md_simple(
            rows, cols, "Quantization error per scheme (rows quantized independently)",
            "Synthetic data: unit-variance samples (64 rows of 4608 values by default). Model data: the fp model's "
            "weights (rows = output channels) and activations (rows = images). Lloyd-Max: the optimal quantizer "
            "with the same number of levels per row; 'official skip-3': the official code's search."))
    if args.angles:
        _plot_angles(args.angles, out / "angles.png")
    if args.kernels:
        rows = pareto_table(qat, args.kernels)
        _write_csv(rows, out / "pareto.csv")
        cols = [("model", "model"), ("x_quant", "activations"), ("w_quant", "weights"), ("kernel", "kernel (k^a x k^w)"),
                (lambda r: f"{r['latency_ms']:.4g}" if not math.isnan(r["latency_ms"]) else "", "latency (ms)"),
                (lambda r: f"{r['top1_mean']:.2f}", "top-1 (%)"), (lambda r: "yes" if r["pareto"] else "", "Pareto")]
        (out / "pareto.md").write_text(_md_simple(rows, cols, "Accuracy vs measured bitwise-kernel latency"))
        _plot_pareto(rows, out / "pareto.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
