"""Loading: training runs from the identity stored in each ``metrics.json`` (or from the MLflow store), the
analysis CSVs joined to the run they analysed (by MLflow run id), and the paper's numbers.

A run is one row of a DataFrame with its identity ``dataset, model, x_quant, w_quant, seed``, its accuracy
(``top1`` / ``top5`` in percent), cost (``train_time_s``), the teacher it was distilled from and its provenance
(``commit, config_hash, data_hash, run_id``). Paths are never parsed: files can live anywhere.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Iterable

import pandas as pd

from ..errors import DataError
from ..schemes import get_scheme
from .render import read_csv

__all__ = ["IDENTITY", "PROVENANCE", "DEFAULT_PAPER", "load_runs", "runs_from_mlflow", "load_paper",
           "load_analysis", "load_training_bench"]

IDENTITY = ("dataset", "model", "x_quant", "w_quant", "seed")
PROVENANCE = ("commit", "config_hash", "data_hash", "run_id")
RUN_COLUMNS = (*IDENTITY, "top1", "top5", "epochs", "train_time_s", "teacher_run_id", *PROVENANCE)
DEFAULT_PAPER = Path(__file__).resolve().parent.parent / "reference" / "paper_numbers.csv"


def _pct(v) -> float:
    """Accuracy in percent as stored by training (NaN when missing)."""
    return float("nan") if v is None else float(v)


def _text(v) -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot read the run's metrics ({exc}); rerun the job that writes it") from exc


def _run_of(path: Path, m: dict) -> dict:
    missing = [k for k in IDENTITY if m.get(k) is None]
    if missing:
        raise DataError(f"{path}: metrics.json lacks the run identity {', '.join(missing)}; "
                        "retrain with the current `lsqbq train`, which records it")
    for key in ("x_quant", "w_quant"):
        get_scheme(m[key])  # an unknown name raises SchemeError naming the valid ones
    return {"dataset": str(m["dataset"]), "model": str(m["model"]), "x_quant": m["x_quant"],
            "w_quant": m["w_quant"], "seed": int(m["seed"]), "top1": _pct(m.get("top1")), "top5": _pct(m.get("top5")),
            "epochs": m.get("epochs"), "train_time_s": _pct(m.get("train_time_s")),
            "teacher_run_id": _text(m.get("teacher_run_id")), **{k: _text(m.get(k)) for k in PROVENANCE}}


def load_runs(train: Iterable[str | Path], evaluate: Iterable[str | Path] = (),
              bitwise: Iterable[str | Path] = ()) -> pd.DataFrame:
    """One row per training run, identity read from its ``metrics.json``.

    ``evaluate`` files (``lsqbq evaluate`` outputs, which name the training run as ``source_run_id``) add
    ``top1_eval`` / ``top5_eval``: the stored checkpoint re-evaluated from disk; with ``--scales both`` also
    ``top1_fitted`` / ``top1_stored`` (activation scales fitted per sample / the moving averages of training).
    ``bitwise`` files (``python -m lsqbq.kernels.evaluation``) add ``top1_bitwise``, ``top1_agreement`` (% of test
    images where the bitwise and simulated models predict the same class) and ``bitwise_scale_mode``.
    """
    runs = [_run_of(Path(p), _read_json(Path(p))) for p in train]
    df = pd.DataFrame(runs, columns=list(RUN_COLUMNS))
    dup = df.duplicated(subset=["dataset", "model", "x_quant", "w_quant", "seed"], keep=False)
    if dup.any():
        r = df[dup].iloc[0]
        raise DataError(f"two metrics.json files for {r.model} {r.x_quant}/{r.w_quant} seed {r.seed}; "
                        "pass each run once")
    evals, bits = _by_source(evaluate, "lsqbq evaluate"), _by_source(bitwise, "python -m lsqbq.kernels.evaluation")
    columns = [(evals, "top1_eval", "top1"), (evals, "top5_eval", "top5")]
    if any("top1_stored" in e for e in evals.values()):
        columns += [(evals, "top1_fitted", "top1_fitted"), (evals, "top1_stored", "top1_stored")]
    if bits:
        columns += [(bits, "top1_bitwise", "top1"), (bits, "top1_agreement", "top1_agreement")]
    for source, column, key in columns:
        df[column] = [_pct(source.get(r, {}).get(key)) for r in df["run_id"]]
    if bits:
        df["bitwise_scale_mode"] = [bits.get(r, {}).get("scale_mode", "") for r in df["run_id"]]
    return df


def _by_source(paths: Iterable[str | Path], command: str) -> dict[str, dict]:
    """``{training run id: result}`` of evaluation JSON files, each naming its training run as ``source_run_id``."""
    out = {}
    for p in paths:
        e = _read_json(Path(p))
        if not e.get("source_run_id"):
            raise DataError(f"{p}: evaluation names no source_run_id; rerun `{command}` on the checkpoint")
        out[str(e["source_run_id"])] = e
    return out


def runs_from_mlflow(tracking_uri: str, experiment: str, dataset: str) -> pd.DataFrame:
    """The same runs as :func:`load_runs`, read from the MLflow store alone.

    Per (model, x_quant, w_quant, seed) the latest FINISHED training run of ``experiment`` is taken (evaluation-only
    runs, tagged ``mode=eval-only``, are skipped). Identity comes from the run's tags, accuracy from the
    ``final_top1`` / ``final_top5`` metrics and provenance from the tags (``git_commit``, ``config_hash``,
    ``data_hash``) and the run id.
    """
    from .. import tracking  # the only importer of mlflow

    client = tracking.client(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise DataError(f"no MLflow experiment {experiment!r} in {tracking_uri}; pass --experiment")
    found: dict[tuple, object] = {}
    for r in client.search_runs([exp.experiment_id], filter_string="attributes.status = 'FINISHED'",
                                max_results=50000, order_by=["attributes.start_time ASC"]):
        t, m = r.data.tags, r.data.metrics
        if t.get("mode") == "eval-only" or "final_top1" not in m or "model" not in t:
            continue
        found[(t["model"], t["x_quant"], t["w_quant"], int(t["seed"]))] = r  # ascending start: the latest wins
    runs = []
    for (model, x, w, seed), r in found.items():
        t, m = r.data.tags, r.data.metrics
        runs.append({"dataset": dataset, "model": model, "x_quant": x, "w_quant": w, "seed": seed,
                     "top1": _pct(m.get("final_top1")), "top5": _pct(m.get("final_top5")),
                     "epochs": r.data.params.get("epochs"), "train_time_s": float("nan"),
                     "teacher_run_id": t.get("teacher_run_id", ""), "commit": t.get("git_commit", ""),
                     "config_hash": t.get("config_hash", ""), "data_hash": t.get("data_hash", ""),
                     "run_id": r.info.run_id})
    return pd.DataFrame(runs, columns=list(RUN_COLUMNS))


def load_paper(path: str | Path | None = None) -> pd.DataFrame:
    """The paper's numbers (``lsqbq/reference/paper_numbers.csv`` by default): one row per reported result."""
    return pd.read_csv(path or DEFAULT_PAPER, dtype=str, keep_default_na=False)


def load_analysis(files: Iterable[str | Path], runs: pd.DataFrame) -> pd.DataFrame:
    """Concatenate ``lsqbq analyze`` CSVs, each row given the ``model`` and ``seed`` of the run it analysed, in
    model order (the order of ``files`` does not matter).

    The run is found by the MLflow run id every analysis row carries (``run_id``, from the analysed checkpoint's
    metrics.json); an analysis of a run not in ``runs`` is an error.
    """
    by_id = {r.run_id: r for r in runs.itertuples() if r.run_id}
    frames = []
    for f in files:
        df = read_csv(f)
        ids = set(df["run_id"]) if "run_id" in df else {""}
        unknown = sorted(i for i in ids if i not in by_id)
        if unknown:
            raise DataError(f"{f}: analyses run {unknown[0] or '(no run id)'}, which is none of the training runs "
                            "given with --train; pass the metrics.json of the analysed model")
        df.insert(0, "model", [by_id[i].model for i in df["run_id"]])
        df.insert(1, "seed", [by_id[i].seed for i in df["run_id"]])
        frames.append(df)
    if not frames:
        return pd.DataFrame()
    return pd.concat(frames, ignore_index=True).sort_values("model", kind="stable").reset_index(drop=True)


def load_training_bench(path: str | Path | None) -> pd.DataFrame:
    """``lsqbq bench training`` results (one row per scheme pair), or an empty frame."""
    if path is None or not Path(path).is_file():
        return pd.DataFrame()
    return read_csv(path)
