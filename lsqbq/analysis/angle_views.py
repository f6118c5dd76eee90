"""The markdown tables of ``lsqbq analyze angles`` and ``lsqbq analyze sweep``, each a pure function of its CSV."""
from __future__ import annotations

import pandas as pd

from ..schemes import get_scheme
from . import report

__all__ = ["angles_view", "sweep_view"]


def _display(name: str) -> str:
    return get_scheme(name).display


def _input_label(df: pd.DataFrame) -> pd.Series:
    """``teacher fp/fp`` / ``student ls-2/ls-1``: whose activations a row measures (``teacher`` when not recorded)."""
    if "input" not in df:
        return pd.Series("teacher", index=df.index)
    run = df["input_run"].fillna("") if "input_run" in df else pd.Series("", index=df.index)
    return (df["input"].fillna("teacher") + " " + run).str.strip()


def _optional(df: pd.DataFrame, col: str, fmt) -> list[str]:
    return [fmt(v) for v in df[col]] if col in df else [""] * len(df)


def angles_view(df: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({
        "input": _input_label(df), "layer": df["layer"], "scheme": df["scheme"].map(_display),
        "angle (degrees)": [report.fmt_mean_std(m, c, 2, 2) for m, c in zip(df["angle_deg"], df["angle_ci95"])],
        "spread (SD over images)": _optional(df, "angle_std", report.fmt_value),
        "relative error": [report.fmt_mean_std(m, c, 2, 4) for m, c in zip(df["rel_error"], df["rel_error_ci95"])],
        "excess kurtosis": _optional(df, "excess_kurtosis", report.fmt_value),
        "near zero": _optional(df, "near_zero", lambda v: report.fmt_value(v, 3))})


def sweep_view(df: pd.DataFrame) -> pd.DataFrame:
    """One row per spike weight: the rows' tail measures and each scheme's mean angle."""
    tails = df.groupby("p", sort=True)[["excess_kurtosis", "near_zero"]].first()
    angles = df.pivot(index="p", columns="scheme", values="angle_deg").sort_index()
    order = sorted(angles.columns, key=lambda n: get_scheme(n).sort_key)
    out = pd.DataFrame({"spike weight p": [f"{p:.2f}" for p in tails.index],
                        "excess kurtosis": tails["excess_kurtosis"].map(report.fmt_value).to_numpy(),
                        "near zero": tails["near_zero"].map(lambda v: report.fmt_value(v, 3)).to_numpy()})
    for s in order:
        out[f"{_display(s)} (°)"] = angles[s].map(report.fmt_value).to_numpy()
    return out
