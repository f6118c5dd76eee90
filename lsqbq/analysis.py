"""Analyses of the quantizers on synthetic data and on a trained full-precision model.

Three commands (``lsqbq analyze <command>``), each writing a CSV and a markdown table (and a figure):

``error``   quantization error of fp, ls-1, gf-2, gf-3, gf-4, ls-T, ls-2 on N(0,1), Laplace and uniform samples and
            on the weights (rows = output channels) and activations (rows = samples) of a trained model, next to
            the Lloyd-Max optimum with the same number of levels and the official every-3rd-element ls-2 / ls-T
            search (paper V1 Sec. 3; our Gaussian check in the reproduction notes).
``ptq``     post-training quantization: the trained model's weights quantized with gf-1..4, ls-T, ls-2 (activations
            full precision), test accuracy per scheme (paper V1 Table 1, top rows).
``angles``  per-layer angle and relative error between the activations at each quantizable layer and their
            quantization per scheme, mean and 95% interval over images (paper V1 Fig. 4). The activations are the
            signed BN outputs beside each quantized conv (:func:`activation_sites`).

Usage::

    lsqbq analyze error  --checkpoint checkpoints/.../checkpoint.pt --out results/analysis/fashion-mnist/resnet_small/error
    lsqbq analyze ptq    --checkpoint checkpoints/.../checkpoint.pt --out results/analysis/fashion-mnist/resnet_small/ptq
    lsqbq analyze angles --checkpoint checkpoints/.../checkpoint.pt --out results/analysis/fashion-mnist/resnet_small/angles
    lsqbq analyze error  --synthetic-only --out results/analysis/synthetic   # no model needed

``--out PREFIX`` writes ``PREFIX.csv`` and ``PREFIX.md`` (and ``PREFIX.png`` for ``angles``).

Definitions (rows quantized independently, errors pooled over all rows of a source):
    MSE = sum (x - x_q)^2 / N,   relative error = ||x - x_q||_2 / ||x||_2,
    angle = arccos(<x, x_q> / (||x|| ||x_q||)) in degrees (Anderson & Berg), per row.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch

from .quantizers import quantize
from .schemes import get_scheme

__all__ = [
    "ERROR_SCHEMES", "PTQ_SCHEMES", "ANGLE_SCHEMES", "lloyd_max", "lloyd_max_density", "official_ls2_search",
    "official_quantize", "synthetic_rows", "error_rows", "quantizable_layers", "activation_sites", "main",
]

ERROR_SCHEMES = ("fp", "ls-1", "gf-2", "gf-3", "gf-4", "ls-T", "ls-2")
PTQ_SCHEMES = ("fp", "gf-1", "gf-2", "gf-3", "gf-4", "ls-T", "ls-2")
ANGLE_SCHEMES = ("ls-1", "gf-2", "gf-3", "gf-4", "ls-T", "ls-2")
OFFICIAL = {"ls-2 (official skip-3)": "ls-2", "ls-T (official skip-3)": "ls-T"}


# ------------------------------------------------------------------------------------------- Lloyd-Max


def lloyd_max(values: np.ndarray, levels: int, weights: np.ndarray | None = None, iters: int = 2000,
              tol: float = 1e-12) -> tuple[np.ndarray, float]:
    """Best ``levels``-point scalar quantizer of a (weighted) 1-D sample: Lloyd's algorithm = 1-D k-means.

    Math: alternate (a) thresholds at the midpoints of adjacent codewords and (b) codewords at the (weighted) means
    of their cells, until the codebook moves less than ``tol``. The result is the Lloyd-Max quantizer; for
    log-concave densities (normal, Laplace, uniform) its fixed point is unique, hence the global optimum. It is
    initialised at the cell means of equal-mass quantile cells. No symmetry is imposed: it lower-bounds every
    foldable scheme with the same number of levels.

    Shapes: ``values: (n,)``, ``weights: (n,)`` or None -> ``(codebook: (levels,), mse)`` with
    ``mse = sum w (x - q(x))^2 / sum w``.
    Cost: one O(n log n) sort; then O(levels log n) per iteration via prefix sums and binary search.
    """
    x = np.asarray(values, dtype=np.float64).ravel()
    w = np.ones_like(x) if weights is None else np.asarray(weights, dtype=np.float64).ravel()
    if x.size == 0 or levels < 1:
        raise ValueError(f"lloyd_max: need a non-empty sample and levels >= 1, got n={x.size}, levels={levels}")
    order = np.argsort(x, kind="stable")
    x, w = x[order], w[order]
    cw = np.concatenate([[0.0], np.cumsum(w)])  # (n+1,)
    cwx = np.concatenate([[0.0], np.cumsum(w * x)])
    cwxx = np.concatenate([[0.0], np.cumsum(w * x * x)])
    total = cw[-1]

    def cell_stats(bounds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        mass = cw[bounds[1:]] - cw[bounds[:-1]]
        sums = cwx[bounds[1:]] - cwx[bounds[:-1]]
        return mass, sums

    # Initial cells: equal mass.
    bounds = np.searchsorted(cw[1:], total * np.arange(1, levels) / levels, side="left") + 1
    bounds = np.concatenate([[0], np.clip(bounds, 0, x.size), [x.size]]).astype(np.int64)
    mass, sums = cell_stats(bounds)
    code = np.where(mass > 0, sums / np.where(mass > 0, mass, 1), np.nan)
    code = _fill_empty(code, x)
    for _ in range(iters):
        mids = (code[1:] + code[:-1]) / 2  # thresholds
        inner = np.searchsorted(x, mids, side="right")  # cell i = x in (mid_{i-1}, mid_i]
        bounds = np.concatenate([[0], inner, [x.size]]).astype(np.int64)
        mass, sums = cell_stats(bounds)
        new = np.where(mass > 0, sums / np.where(mass > 0, mass, 1), code)
        new = np.sort(new)
        moved = np.max(np.abs(new - code)) if new.size else 0.0
        code = new
        if moved <= tol * max(1.0, float(np.max(np.abs(code)))):
            break
    mids = (code[1:] + code[:-1]) / 2
    bounds = np.concatenate([[0], np.searchsorted(x, mids, side="right"), [x.size]]).astype(np.int64)
    mass, sums = cell_stats(bounds)
    sq = cwxx[bounds[1:]] - cwxx[bounds[:-1]]
    err = np.sum(sq - 2 * code * sums + code * code * mass)  # sum w (x - c)^2 per cell
    return code, float(max(err, 0.0) / total)


def _fill_empty(code: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Replace NaN codewords (empty initial cells, e.g. from ties) by evenly spread sample values."""
    if not np.isnan(code).any():
        return code
    spread = np.quantile(x, (np.arange(code.size) + 0.5) / code.size)
    return np.sort(np.where(np.isnan(code), spread, code))


def lloyd_max_density(dist: str, levels: int, points: int = 400_001) -> tuple[np.ndarray, float]:
    """Lloyd-Max quantizer of a unit-variance density by numerical integration on a fine grid.

    ``dist``: ``normal`` (N(0,1)), ``laplace`` (scale 1/sqrt 2) or ``uniform`` (on [-sqrt 3, sqrt 3]).
    The density is tabulated on ``points`` equispaced nodes (trapezoid weights) covering all but ~1e-15 of the
    mass and quantized with :func:`lloyd_max`. Known values: normal 2/3/4 levels -> MSE 0.3634 / 0.1902 / 0.1175.
    """
    if dist == "normal":
        grid = np.linspace(-9.0, 9.0, points)
        pdf = np.exp(-grid**2 / 2)
    elif dist == "laplace":
        b = 1 / math.sqrt(2)
        grid = np.linspace(-40 * b, 40 * b, points)
        pdf = np.exp(-np.abs(grid) / b)
    elif dist == "uniform":
        h = math.sqrt(3)
        grid = np.linspace(-h, h, points)
        pdf = np.ones_like(grid)
    else:
        raise ValueError(f"unknown distribution {dist!r}; choose normal, laplace or uniform")
    w = pdf.copy()
    w[0] /= 2
    w[-1] /= 2
    return lloyd_max(grid, levels, weights=w)


# ------------------------------------------------------------------------ the official skip-3 search


def official_ls2_search(x: np.ndarray, ternary: bool = False, skip: int = 3) -> np.ndarray:
    """The official code's candidate search for ls-2 / ls-T scales, re-implemented from its description.

    For every row: take ``a = sort(|x[::skip]|)`` (n' values) and prefix sums. At each interior split j
    (``1 <= j <= n'-2``: the first and last sorted entries are skipped) form the fixed-point targets
    ``m = (E_lo + E_hi)/2`` (condition (10); ls-2 only) and ``t = E_hi/2`` (condition (12), the ternary-type
    target) with ``E_lo = mean(a_0..a_j)`` and ``E_hi = mean(a_{j+1}..a_{n'-1})``. The *data value* ``a_j`` is a
    candidate v_1 when a target lies in ``[a_j, a_{j+1}]``. Ternary edge case: if ``min a > mean(a)/2``,
    ``mean(a)/2`` is added. The winner minimises, on the subsample, ``||r - v_2 sign(r)||`` with
    ``r = |x| - v_1`` (equivalently ``x - v_1 sign(x)``) and ``v_2 = mean|r|`` (ls-2) or ``v_2 = v_1`` (ls-T).
    Finally, for ls-2, ``v_2`` is recomputed as ``mean|x - v_1 sign(x)|`` over the full row; for ls-T the
    subsample's v is kept.

    Differences from the exact :func:`lsqbq.quantizers.fit_ls2`: only every ``skip``-th entry is searched and v_1
    is a data value, not the fixed point itself; rows without candidates fall back to ``v_1 = 0`` (the official
    code pads candidate lists with zeros).

    Shapes: ``x: (R, n) -> (R, 2)``. Cost: O(n/skip log(n/skip)) per row plus O(c n/skip) for c candidates.
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"expected a 2-D array (rows), got shape {x.shape}")
    out = np.zeros((x.shape[0], 2))
    for i, row in enumerate(x):
        sub = np.abs(row[::skip])
        a = np.sort(sub)
        n = a.size
        cands: list[float] = []
        if n >= 3:
            cs = np.cumsum(a)
            j = np.arange(1, n - 1)
            lo = cs[j] / (j + 1)
            hi = (cs[-1] - cs[j]) / (n - 1 - j)
            targets = [hi / 2] if ternary else [hi / 2, (lo + hi) / 2]
            mask = np.zeros(j.size, dtype=bool)
            for t in targets:
                mask |= (a[j] <= t) & (t <= a[j + 1])
            cands = list(a[j][mask])
        if ternary and n and a[0] > a.mean() / 2:
            cands.append(a.mean() / 2)
        if not cands:
            cands = [0.0]
        v1s = np.asarray(cands)[:, None]  # (c, 1)
        r = sub[None, :] - v1s  # |x| - v1 has the magnitude of x - v1 sign(x)
        v2s = v1s if ternary else np.abs(r).mean(axis=1, keepdims=True)
        cost = np.linalg.norm(r - v2s * np.where(r >= 0, 1.0, -1.0), axis=1)
        v1 = float(v1s[int(np.argmin(cost)), 0])
        v2 = v1 if ternary else float(np.abs(np.abs(row) - v1).mean())
        out[i] = (v1, v2)
    return out


def official_quantize(x: torch.Tensor, scheme: str, skip: int = 3) -> torch.Tensor:
    """Quantize rows of ``x`` with ``scheme`` (``ls-2`` / ``ls-T``) using the scales of :func:`official_ls2_search`."""
    s = get_scheme(scheme)
    if s.name not in ("ls-2", "ls-T"):
        raise ValueError(f"the official search exists for ls-2 and ls-T only, not {s.name!r}")
    v = official_ls2_search(x.detach().double().cpu().numpy(), ternary=s.ternary, skip=skip)
    return quantize(x, s, torch.as_tensor(v, dtype=x.dtype, device=x.device))


# -------------------------------------------------------------------------------------- error tables


def synthetic_rows(dist: str, rows: int, n: int, seed: int = 0) -> torch.Tensor:
    """``(rows, n)`` float64 sample of a unit-variance ``normal``, ``laplace`` or ``uniform`` distribution."""
    g = np.random.default_rng(seed)
    if dist == "normal":
        x = g.standard_normal((rows, n))
    elif dist == "laplace":
        x = g.laplace(0.0, 1 / math.sqrt(2), (rows, n))
    elif dist == "uniform":
        x = g.uniform(-math.sqrt(3), math.sqrt(3), (rows, n))
    else:
        raise ValueError(f"unknown distribution {dist!r}; choose normal, laplace or uniform")
    return torch.from_numpy(x)


def _levels(name: str) -> int:
    return get_scheme(OFFICIAL.get(name, name)).levels


def _row_lloyd(rows: Sequence[torch.Tensor], levels: int) -> tuple[float, float]:
    """Pooled (sum of squared errors, count) of the per-row Lloyd-Max quantizer with ``levels`` levels."""
    sse, count = 0.0, 0
    for r in rows:
        v = r.detach().double().cpu().numpy().ravel()
        _, mse = lloyd_max(v, levels)
        sse += mse * v.size
        count += v.size
    return sse, count


def error_rows(source: str, blocks: Iterable[torch.Tensor], schemes: Sequence[str] = ERROR_SCHEMES,
               official: bool = True, lloyd_rows: int | None = None) -> list[dict]:
    """Quantization error of every scheme on ``blocks`` (2-D tensors; each row quantized independently).

    Errors are pooled over all blocks: ``mse = sum (x - x_q)^2 / N``, ``rel_error = ||x - x_q|| / ||x||``.
    ``lloyd_max_mse`` is the pooled error of the per-row Lloyd-Max quantizer with the scheme's number of levels
    (computed on at most ``lloyd_rows`` rows per block, all if None); ``excess = mse / lloyd_max_mse - 1``.
    """
    blocks = [b.detach().double().cpu() for b in blocks]
    names = list(schemes) + (list(OFFICIAL) if official else [])
    n = sum(b.numel() for b in blocks)
    energy = float(sum(b.square().sum() for b in blocks))
    lloyd_cache: dict[int, float] = {}
    out = []
    for name in names:
        sse = 0.0
        for b in blocks:
            xq = official_quantize(b, OFFICIAL[name]) if name in OFFICIAL else quantize(b, name)
            sse += float((b - xq).square().sum())
        levels = _levels(name)
        row = {"source": source, "scheme": name, "levels": levels or "", "n_values": n,
               "mse": sse / n, "rel_error": math.sqrt(sse / energy) if energy > 0 else 0.0}
        if levels:
            if levels not in lloyd_cache:
                s_l, c_l = 0.0, 0
                for b in blocks:
                    part = b if lloyd_rows is None else b[:lloyd_rows]
                    s, c = _row_lloyd(list(part), levels)
                    s_l, c_l = s_l + s, c_l + c
                lloyd_cache[levels] = s_l / c_l
            row["lloyd_max_mse"] = lloyd_cache[levels]
            row["excess"] = row["mse"] / row["lloyd_max_mse"] - 1 if row["lloyd_max_mse"] > 0 else 0.0
        else:
            row["lloyd_max_mse"] = 0.0
            row["excess"] = 0.0
        out.append(row)
    return out


# ------------------------------------------------------------------------------------ model helpers


def quantizable_layers(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """The layers a quantized student quantizes: every :class:`~lsqbq.layers.QuantConv2d` / ``QuantLinear``.

    Stem, shortcut and classifier stay full precision in the paper's networks and are plain ``nn`` modules there.
    """
    from .layers import QuantConv2d, QuantLinear

    return [(name, m) for name, m in model.named_modules() if isinstance(m, (QuantConv2d, QuantLinear))]


def _load(checkpoint: str, threads: int | None, test_subset: int | None = None):
    from . import data as D
    from . import train as T

    if threads:
        torch.set_num_threads(threads)
    model, cfg = T.load_checkpoint(checkpoint)
    model.eval()
    if test_subset is not None:
        cfg.data.test_subset = test_subset
    _, test_loader = D.build_loaders(cfg)
    return model, cfg, test_loader


def _weights_of(model) -> list[torch.Tensor]:
    return [m.weight.detach().reshape(m.weight.shape[0], -1) for _, m in quantizable_layers(model)]


def activation_sites(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """Where the activations that a quantized student binarizes live: BN layers beside a quantizable conv.

    In the XNOR-ordered block (BN -> Q -> conv) and in LeNet-5 the output of such a BN *is* the activation
    quantizer's input. In the full-precision ``regular`` block (conv -> BN -> ReLU) it is the pre-activation,
    the signed tensor the paper's angle analysis needs (a post-ReLU input would binarize to all +1). Stem and
    shortcut BNs (no quantizable sibling) are left out. Returns ``(name, module)`` in forward order.
    """
    from .layers import QuantConv2d, QuantLinear

    sites = []
    for pname, parent in model.named_modules():
        children = dict(parent.named_children())
        if not any(isinstance(c, (QuantConv2d, QuantLinear)) for c in children.values()):
            continue
        for cname, child in children.items():
            if isinstance(child, torch.nn.BatchNorm2d) and "shortcut" not in cname:
                sites.append((f"{pname}.{cname}" if pname else cname, child))
    return sites


@torch.no_grad()
def _layer_inputs(model, loader, images: int) -> tuple[list[str], list[torch.Tensor]]:
    """Activations at every :func:`activation_sites` site on the first ``images`` test images, as
    ``(images, features)`` rows (one row per image: the official per-sample granularity)."""
    sites = activation_sites(model)
    store: dict[str, list[torch.Tensor]] = {name: [] for name, _ in sites}
    order: list[str] = []

    def hook(name):
        def fn(mod, inp, out):
            if name not in order:
                order.append(name)
            store[name].append(out.detach().cpu())
        return fn

    hooks = [m.register_forward_hook(hook(name)) for name, m in sites]
    seen = 0
    try:
        for x, _ in loader:
            x = x[: images - seen]
            model(x)
            seen += x.shape[0]
            if seen >= images:
                break
    finally:
        for h in hooks:
            h.remove()
    return order, [torch.cat(store[n]).reshape(seen, -1) for n in order]


def _write_table(rows: list[dict], prefix: str | Path, title: str, floatfmt: str = ".4g") -> None:
    import pandas as pd

    prefix = Path(prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    df = pd.DataFrame(rows)
    df.to_csv(prefix.with_suffix(".csv"), index=False)
    lines = [f"# {title}", "", _markdown(df, floatfmt), ""]
    prefix.with_suffix(".md").write_text("\n".join(lines))


def _markdown(df, floatfmt: str = ".4g") -> str:
    def fmt(v):
        if isinstance(v, float):
            return "" if math.isnan(v) else format(v, floatfmt)
        return str(v)

    head = "| " + " | ".join(map(str, df.columns)) + " |"
    sep = "|" + "|".join("---" for _ in df.columns) + "|"
    body = ["| " + " | ".join(fmt(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join([head, sep, *body])


def _provenance(checkpoint: str | None) -> dict:
    """commit / config hash / data hash / run id of the model analysed, from the metrics.json beside it."""
    if checkpoint is None:
        return {}
    path = Path(checkpoint).with_name("metrics.json")
    if not path.is_file():
        return {}
    m = json.loads(path.read_text())
    return {k: m.get(k, "") for k in ("commit", "config_hash", "data_hash", "run_id")}


# ------------------------------------------------------------------------------------------ commands


def cmd_error(args) -> None:
    rows: list[dict] = []
    for i, dist in enumerate(args.distributions):
        x = synthetic_rows(dist, args.rows, args.n, seed=args.seed + i)
        rows += error_rows(dist, [x])
    prov = {}
    if args.checkpoint and not args.synthetic_only:
        model, cfg, loader = _load(args.checkpoint, args.threads, args.test_subset)
        prov = _provenance(args.checkpoint)
        rows += error_rows("weights", _weights_of(model))
        _, acts = _layer_inputs(model, loader, args.images)
        rows += error_rows("activations", acts, lloyd_rows=args.lloyd_rows)
    for r in rows:
        r.update(prov)
    _write_table(rows, args.out, "Quantization error: MSE, relative error, Lloyd-Max optimum (same levels)")


def cmd_ptq(args) -> None:
    from . import train as T

    model, cfg, loader = _load(args.checkpoint, args.threads, args.test_subset)
    prov = _provenance(args.checkpoint)
    rows = []
    for name in args.schemes:
        m = copy.deepcopy(model)
        with torch.no_grad():
            for _, layer in quantizable_layers(m):
                w = layer.weight
                w.copy_(quantize(w.reshape(w.shape[0], -1), name).reshape(w.shape))
        res = T.evaluate(m, loader, torch.device("cpu"))
        s = get_scheme(name)
        rows.append({"w_quant": name, "k_w": s.label, "x_quant": "fp", "k_a": "32",
                     "top1": float(res["top1"]), "top5": float(res.get("top5", float("nan"))), **prov})
    _write_table(rows, args.out, "Post-training quantization of the weights (activations full precision)", ".2f")


def cmd_angles(args) -> None:
    model, cfg, loader = _load(args.checkpoint, args.threads, args.test_subset)
    prov = _provenance(args.checkpoint)
    names, acts = _layer_inputs(model, loader, args.images)
    rows = []
    for li, (layer, x) in enumerate(zip(names, acts)):
        x = x.double()
        for name in args.schemes:
            xq = quantize(x, name)
            cos = (x * xq).sum(1) / (x.norm(dim=1) * xq.norm(dim=1)).clamp_min(1e-300)
            ang = torch.rad2deg(torch.acos(cos.clamp(-1, 1))).numpy()
            rel = ((x - xq).norm(dim=1) / x.norm(dim=1).clamp_min(1e-300)).numpy()
            half = lambda v: 1.96 * v.std(ddof=1) / math.sqrt(v.size) if v.size > 1 else 0.0  # noqa: E731
            rows.append({"layer_index": li, "layer": layer, "scheme": name, "images": x.shape[0],
                         "angle_deg": float(ang.mean()), "angle_ci95": float(half(ang)),
                         "rel_error": float(rel.mean()), "rel_error_ci95": float(half(rel)), **prov})
    _write_table(rows, args.out, "Per-layer angle and relative error of quantized activations (mean, 95% CI)")
    _plot_angles(rows, Path(args.out).with_suffix(".png"))


def _plot_angles(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    schemes = list(dict.fromkeys(r["scheme"] for r in rows))
    for s in schemes:
        rs = [r for r in rows if r["scheme"] == s]
        li = np.array([r["layer_index"] for r in rs])
        for ax, key in zip(axes, ("angle_deg", "rel_error")):
            m = np.array([r[key] for r in rs])
            ci = np.array([r[key + "_ci95"] if key == "rel_error" else r["angle_ci95"] for r in rs])
            ax.plot(li, m, marker="o", label=s)
            ax.fill_between(li, m - ci, m + ci, alpha=0.2)
    axes[0].set_ylabel("angle between x and x_q (degrees)")
    axes[1].set_ylabel("||x - x_q|| / ||x||")
    for ax in axes:
        ax.set_xlabel("quantized layer (input order)")
        ax.grid(alpha=0.3)
    axes[0].legend(title="scheme")
    fig.suptitle("Quantized activations of the trained full-precision model (mean, 95% CI over images)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lsqbq analyze", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp, need_ckpt: bool = True):
        sp.add_argument("--checkpoint", required=need_ckpt, help="checkpoint.pt of the trained model")
        sp.add_argument("--out", required=True, help="output prefix: writes PREFIX.csv and PREFIX.md")
        sp.add_argument("--threads", type=int, default=None, help="torch CPU threads")
        sp.add_argument("--test-subset", type=int, default=None, help="evaluate on this many test images")
        sp.add_argument("--images", type=int, default=128, help="images whose activations are analysed")

    e = sub.add_parser("error", help="quantization error vs Lloyd-Max and the official search")
    common(e, need_ckpt=False)
    e.add_argument("--synthetic-only", action="store_true", help="skip the model's weights and activations")
    e.add_argument("--distributions", nargs="+", default=["normal", "laplace", "uniform"])
    e.add_argument("--rows", type=int, default=64, help="rows per synthetic sample")
    e.add_argument("--n", type=int, default=4608, help="values per synthetic row (a 512x3x3 filter)")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--lloyd-rows", type=int, default=None, help="activation rows per layer for Lloyd-Max")

    q = sub.add_parser("ptq", help="post-training weight quantization accuracy")
    common(q)
    q.add_argument("--schemes", nargs="+", default=list(PTQ_SCHEMES))

    a = sub.add_parser("angles", help="per-layer angle / relative error of quantized activations")
    common(a)
    a.add_argument("--schemes", nargs="+", default=list(ANGLE_SCHEMES))
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "error" and not args.checkpoint and not args.synthetic_only:
        args.synthetic_only = True
    {"error": cmd_error, "ptq": cmd_ptq, "angles": cmd_angles}[args.command](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
