"""The report of ``lsqbq bench peers`` (:mod:`.peers`): the markdown table, the README's headline table, the drift
and thread-interference verdicts, and the MLflow metrics, all from the rows :func:`.peers.run_grid` timed."""
from __future__ import annotations

import re

import pandas as pd

from .harness import provenance_line

__all__ = ["BASELINE", "DRIFT_LIMIT", "AGREE_RTOL", "CALIBRATION_BATCHES", "drift_verdict", "thread_interference",
           "slower_with_threads", "to_markdown", "headline", "verdict", "metric_name", "summarise"]

BASELINE = "torch fp32"  # the engine every ratio divides
DRIFT_LIMIT = 0.10  # |baseline at the end / at the start - 1| above this: the machine's speed changed
AGREE_RTOL = 1e-4
CALIBRATION_BATCHES = 4


def drift_verdict(df: pd.DataFrame) -> str:
    worst = float(df["drift"].abs().max()) if len(df) else float("nan")
    if worst > DRIFT_LIMIT:
        return (f"**drifted: rerun on a quiet machine** (the torch fp32 baseline changed by up to {worst:.0%} "
                f"between the start and the end of the run; limit {DRIFT_LIMIT:.0%})")
    slower = thread_interference(df)
    if slower:
        return (f"**threads interfered: rerun on two idle cores** (torch fp32 took {slower:.1f}x longer with more "
                "threads than with one at the same batch: another process or an engine's spinning pool held a core)")
    return f"no drift: the torch fp32 baseline changed by at most {worst:.1%} between the start and the end"


def thread_interference(df: pd.DataFrame, limit: float = 1.2) -> float:
    """The largest ratio of the torch fp32 baseline's time with more threads to its time with one thread at the same
    batch, when above ``limit`` (more threads never make oneDNN's ResNet-18 slower on idle cores); else 0."""
    if not {"engine", "batch", "threads", "seconds"} <= set(df.columns):
        return 0.0
    base = df[df.engine == BASELINE]
    worst = 0.0
    for _, g in base.groupby("batch"):
        one, more = g.loc[g.threads == 1, "seconds"], g.loc[g.threads > 1, "seconds"]
        if len(one) and len(more):
            worst = max(worst, float(more.max() / one.iloc[0]))
    return worst if worst > limit else 0.0


def slower_with_threads(df: pd.DataFrame, limit: float = 1.2) -> str:
    """A sentence naming every engine other than the baseline whose time with more threads is above ``limit``
    times its time with one thread at the same batch (such a cell says more about the run than the engine: in this
    process OpenVINO's binary rows at batch 1 took either about 3.2 or about 7.3 ms on 2 threads, run by run, with
    5.2-5.9 ms on 1), or "" when there is none."""
    if not {"engine", "batch", "threads", "seconds"} <= set(df.columns):
        return ""
    found = []
    for (engine, batch), g in df[df.engine != BASELINE].groupby(["engine", "batch"], sort=False):
        one, more = g.loc[g.threads == 1, "seconds"], g.loc[g.threads > 1, "seconds"]
        if len(one) and len(more) and float(more.max() / one.iloc[0]) > limit:
            found.append(f"{engine} at batch {batch} ({float(more.max() / one.iloc[0]):.2f}x)")
    if not found:
        return ""
    return ("Slower with more threads than with one, so those cells are suspect (rerun): " + ", ".join(found)
            + ".")


def to_markdown(df: pd.DataFrame, skipped: list[dict]) -> str:
    r = df.iloc[0]
    table = df[["engine", "precision", "method", "batch", "threads", "ms", "ratio_vs_torch_fp32", "max_abs_diff",
                "agrees"]].copy()
    table["ms"] = table["ms"].map(lambda v: f"{v:.3f}")
    table["ratio_vs_torch_fp32"] = table["ratio_vs_torch_fp32"].map(lambda v: f"{v:.2f}x")
    table["max_abs_diff"] = table["max_abs_diff"].map(lambda v: "" if v != v else f"{v:.2g}")
    table["agrees"] = table["agrees"].map(lambda v: "" if v is None or v != v else ("yes" if v else "NO"))
    table = table.rename(columns={"ratio_vs_torch_fp32": "vs torch fp32"})
    parts = [
        "# ResNet-18 on CPU engines: lsqbq's binary network beside its peers\n\n"
        f"Machine: {r['cpu']}, {r['cores']} cores; flags: {r['flags']}; torch {r['torch']}; input "
        f"{r['size']}x{r['size']}. Median of repeats, engines timed round-robin in each (batch, threads) group; "
        "`vs torch fp32` = torch fp32 time / row time of the same batch and threads (above 1: faster). Binary rows "
        "run the paper's topology (fp32 stem, shortcuts and classifier); float rows torchvision ResNet-18. "
        "`max_abs_diff`: logits against the binary network's lsqbq run (binary rows) or torch fp32 (float rows); "
        f"`agrees`: within rtol {AGREE_RTOL:g} of lsqbq's logits. Int8 calibration: {CALIBRATION_BATCHES} "
        "synthetic batches.",
        *filter(None, [provenance_line(df)]),
        " ".join(filter(None, [drift_verdict(df) + ".", slower_with_threads(df)])),
        table.to_markdown(index=False)]
    if skipped:
        parts += ["## Skipped", "\n".join(f"- {s['engine']}: {s['reason']}" for s in skipped)]
    return "\n\n".join(parts) + "\n"


def _group(batch: int, threads: int) -> str:
    """A (batch, threads) group's name in the headline: its column, and its place in the verdict."""
    return f"batch {batch}, {threads} thread{'s' * (threads > 1)}"


def headline(df: pd.DataFrame) -> str:
    """One row per engine, one column per (batch, threads): median ms and the ratio to torch fp32 of the same group
    (``results/bench/peers_headline.md``, the README's kernel table)."""
    cell = df.assign(group=[_group(b, t) for b, t in zip(df.batch, df.threads)],
                     text=[f"{ms:.2f} ms ({r:.2f}x)" for ms, r in zip(df.ms, df.ratio_vs_torch_fp32)])
    table = cell.pivot_table(index=["engine", "precision"], columns="group", values="text", aggfunc="first",
                             sort=False)
    table = table[sorted(table.columns, key=lambda g: (int(g.split()[1].rstrip(",")), g))].reset_index()
    suspect, lines = slower_with_threads(df), verdict(df)
    if suspect:  # one more item of the list below the table (the README's page keeps its length)
        lines = lines.rstrip("\n") + f"\n- {suspect}\n"
    return table.fillna("").to_markdown(index=False) + "\n" + lines


def verdict(df: pd.DataFrame) -> str:
    """One line per lsqbq engine: in each (batch, threads) group, the fastest other engine's median time over
    lsqbq's (above 1x: lsqbq is faster) and which engine that is; empty when there is no other engine."""
    lines = []
    others = df[~df.engine.str.startswith("lsqbq") & (df.engine != BASELINE)]
    for engine in [e for e in df.engine.unique() if e.startswith("lsqbq")]:
        parts = []
        for (b, t), group in df[df.engine == engine].groupby(["batch", "threads"], sort=True):
            rivals = others[(others.batch == b) & (others.threads == t)]
            if len(rivals):
                best = rivals.loc[rivals.seconds.idxmin()]
                parts.append(f"{_group(b, t)}: {best.seconds / group.seconds.iloc[0]:.2f}x ({best.engine})")
        if parts:
            lines.append(f"- {engine} against the fastest other engine (its time over ours): " + "; ".join(parts))
    return ("\n" + "\n".join(lines) + "\n") if lines else ""


def metric_name(text: str) -> str:
    """``text`` with the characters MLflow refuses in metric names replaced by ``_``."""
    return re.sub(r"[^0-9A-Za-z_\-. /]", "_", text)


def summarise(df: pd.DataFrame) -> dict[str, float]:
    out = {metric_name(f"{r.engine} batch{r.batch} threads{r.threads} vs torch fp32"): float(r.ratio_vs_torch_fp32)
           for r in df.itertuples() if r.engine != BASELINE}
    out["max_drift"] = float(df["drift"].abs().max())
    ov = df[df.engine == "openvino binary"]
    if len(ov):
        out["openvino_binary_max_abs_diff"] = float(ov.max_abs_diff.max())
        out["openvino_binary_agrees"] = float(ov.agrees.astype(bool).all())
    return out
