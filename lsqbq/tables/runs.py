"""Loading: training runs from the identity stored in each ``metrics.json`` (or from the MLflow store), the
analysis CSVs joined to the run they analysed (by MLflow run id), and the paper's numbers.

A run is one row of a DataFrame with its identity ``dataset, model, x_quant, w_quant, seed``, its accuracy
(``top1`` / ``top5`` in percent), cost (``train_time_s``), the teacher it was distilled from and its provenance
(``commit, config_hash, data_hash, run_id``). Files can live anywhere: identity comes from their contents, and a file
inside the workflow layout must agree with its folders (:mod:`~lsqbq.tables.run_files`).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import pandas as pd

from ..errors import DataError, RunFileError
from .render import read_csv
from .run_files import check_path_identity, dataset_names, names_dataset, read_run_file

__all__ = ["IDENTITY", "PROVENANCE", "DEFAULT_PAPER", "RunSet", "read_runs", "load_runs", "runs_from_mlflow",
           "load_paper", "load_analysis", "load_training_bench"]

IDENTITY = ("dataset", "model", "x_quant", "w_quant", "seed")
PROVENANCE = ("commit", "config_hash", "data_hash", "run_id")
RUN_COLUMNS = (*IDENTITY, "top1", "top5", "epochs", "train_time_s", "teacher_run_id", *PROVENANCE)
DEFAULT_PAPER = Path(__file__).resolve().parent.parent / "reference" / "paper_numbers.csv"


def _pct(v) -> float:
    """Accuracy in percent as stored by training (NaN when missing)."""
    return float("nan") if v is None else float(v)


def _text(v) -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v)


@dataclass
class RunSet:
    """The runs the tables show and what was left out of them.

    ``runs``: one row per training run (columns of :func:`load_runs`); ``excluded``: one message per result file or
    run left out by ``exclude_invalid`` (each names its file and why); ``evaluate`` / ``bitwise``: the evaluation
    files joined to a run in ``runs`` (for readers of the files beside them)."""

    runs: pd.DataFrame
    excluded: list[str] = field(default_factory=list)
    evaluate: list[Path] = field(default_factory=list)
    bitwise: list[Path] = field(default_factory=list)


class _Reader:
    """Reads result files; a :class:`RunFileError` is raised, or with ``exclude`` recorded and the file skipped."""

    def __init__(self, exclude: bool):
        self.exclude, self.excluded = exclude, []
        self.dropped: set[str] = set()  # run ids of the training runs left out (their evaluations go silently)

    def skip(self, exc: RunFileError, run_id=None) -> None:
        if not self.exclude:
            raise exc
        self.excluded.append(str(exc))
        if isinstance(run_id, str) and run_id:
            self.dropped.add(run_id)

    def read(self, path: Path, kind: str) -> dict | None:
        try:
            return read_run_file(path, kind)
        except RunFileError as exc:
            self.skip(exc, _run_id(path) if kind == "train" and self.exclude else None)
            return None


def _run_id(path: Path):
    """The ``run_id`` an invalid training file still names, if any (so its evaluations are not reported again)."""
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("run_id") if path.is_file() else None
    except (OSError, ValueError, AttributeError):
        return None


def _run_of(path: Path, m: dict, dataset: str | None) -> dict:
    """One run's row from its validated ``metrics.json``, its identity checked against its folders and against
    ``dataset`` (the table's dataset label, when given)."""
    check_path_identity(path, m)
    if dataset is not None and not names_dataset(dataset, m["dataset"]):
        raise RunFileError(f"{path}: key 'dataset' is {m['dataset']!r}, but the tables are built for --dataset "
                           f"{dataset!r}; pass only that dataset's runs")
    return {"dataset": m["dataset"], "model": m["model"], "x_quant": m["x_quant"], "w_quant": m["w_quant"],
            "seed": m["seed"], "top1": _pct(m["top1"]), "top5": _pct(m["top5"]), "epochs": m["epochs"],
            "train_time_s": _pct(m["train_time_s"]), "teacher_run_id": _text(m.get("teacher_run_id")),
            **{k: _text(m.get(k)) for k in PROVENANCE}}


def _one_dataset(rows: list[dict], paths: list[Path], dataset: str | None, reader: _Reader) -> list[int]:
    """Indices of the runs of the table's dataset: ``dataset`` when it names a loader, else the loader most runs
    recorded; a run of another one is invalid."""
    recorded = [r["dataset"] for r in rows]
    if len(set(recorded)) <= 1:  # one dataset (a --dataset naming another one was refused per run)
        return list(range(len(rows)))
    expected = dataset if dataset in dataset_names() else max(dict.fromkeys(recorded), key=recorded.count)
    keep = []
    for i, r in enumerate(rows):
        if r["dataset"] == expected:
            keep.append(i)
            continue
        reader.skip(RunFileError(f"{paths[i]}: key 'dataset' is {r['dataset']!r}, but the other runs are of "
                                 f"{expected!r}; a table averages the runs of one dataset: pass only those"),
                    r["run_id"])
    return keep


def _duplicates(rows: list[dict], paths: list[Path]) -> None:
    seen: dict[tuple, Path] = {}
    for r, p in zip(rows, paths):
        key = tuple(r[k] for k in IDENTITY)
        if key in seen:
            raise DataError(f"two metrics.json files for {r['model']} {r['x_quant']}/{r['w_quant']} seed "
                            f"{r['seed']}: {seen[key]} and {p}; pass each run once")
        seen[key] = p


def _join(files: Iterable[str | Path], kind: str, rows: list[dict], paths: list[Path],
          reader: _Reader) -> dict[str, tuple[Path, dict]]:
    """``{training run id: (file, result)}`` of the evaluation files of ``kind``: each names its training run as
    ``source_run_id``, was evaluated with that run's schemes and sits in that run's folder (if in the layout)."""
    by_id = {r["run_id"]: i for i, r in enumerate(rows) if r["run_id"]}
    option = f"--{kind}"
    out: dict[str, tuple[Path, dict]] = {}
    for f in map(Path, files):
        e = reader.read(f, kind)
        if e is None:
            continue
        src = e["source_run_id"]
        if src in reader.dropped:
            continue
        try:
            if src not in by_id:
                raise RunFileError(f"{f}: key 'source_run_id' is {src!r}, which is none of the training runs given "
                                   "with --train; pass the metrics.json of the evaluated run")
            i = by_id[src]
            run = rows[i]
            for key in ("x_quant", "w_quant"):
                if e[key] != run[key]:
                    raise RunFileError(f"{f}: key {key!r} is {e[key]!r}, but its run {src} ({paths[i]}) was trained "
                                       f"with {key} {run[key]!r}; a table compares each run as it was trained")
            check_path_identity(f, {**{k: run[k] for k in IDENTITY}, "x_quant": e["x_quant"],
                                    "w_quant": e["w_quant"]}, what="its run's")
        except RunFileError as exc:
            reader.skip(exc)
            continue
        if src in out:
            raise DataError(f"two {option} files for run {src}: {out[src][0]} and {f}; pass each once")
        out[src] = (f, e)
    return out


#: Results a run may have beside its training metrics: column that holds it -> (what it is, option that passes it).
_BESIDE = {"top1_eval": ("evaluation", "--evaluate"), "top1_stored": ("`--scales both` evaluation", "--evaluate"),
           "top1_bitwise": ("bitwise evaluation", "--bitwise")}


def _complete(df: pd.DataFrame, paths: list[Path], reader: _Reader) -> list[int]:
    """Positions of the runs that have every result the other runs of their row (model, x_quant, w_quant) have, so
    that every cell of a row holds the same runs; a run lacking one is invalid."""
    keep = []
    for i, r in enumerate(df.itertuples(index=False)):
        row = df[(df["model"] == r.model) & (df["x_quant"] == r.x_quant) & (df["w_quant"] == r.w_quant)]
        lacking = [c for c in _BESIDE if c in df and pd.isna(getattr(r, c)) and row[c].notna().any()]
        if not lacking:
            keep.append(i)
            continue
        what, option = _BESIDE[lacking[0]]
        others = sorted(row.loc[row[lacking[0]].notna(), "seed"])
        seeds = ("seed " if len(others) == 1 else "seeds ") + ", ".join(map(str, others))
        reader.skip(RunFileError(f"{paths[i]}: run {r.model} {r.x_quant}/{r.w_quant} seed {r.seed} has no {what}, "
                                 f"which the run of {seeds} of its row has; pass its file with {option}, so that "
                                 "every cell of the row counts the same runs"), r.run_id)
    return keep


def read_runs(train: Iterable[str | Path], evaluate: Iterable[str | Path] = (), bitwise: Iterable[str | Path] = (),
              *, dataset: str | None = None, exclude_invalid: bool = False) -> RunSet:
    """Every training run with its evaluations, each file validated (:mod:`~lsqbq.tables.run_files`).

    Invalid: a file that breaks its schema, a run whose identity disagrees with its folder or with ``dataset``
    (or, when ``dataset`` is a tag, with the loader most runs recorded), an evaluation of another run or scheme
    pair, and a run lacking a result (evaluation, bitwise evaluation) the other runs of its row have. Invalid
    files raise :class:`~lsqbq.errors.RunFileError` naming the file and the key, or with ``exclude_invalid`` are
    left out (a run with them) and listed in :attr:`RunSet.excluded`. Passing a run or an evaluation twice is a
    :class:`~lsqbq.errors.DataError` either way.
    """
    reader = _Reader(exclude_invalid)
    rows, paths = [], []
    for p in map(Path, train):
        m = reader.read(p, "train")
        if m is None:
            continue
        try:
            rows.append(_run_of(p, m, dataset))
            paths.append(p)
        except RunFileError as exc:
            reader.skip(exc, m.get("run_id"))
    keep = _one_dataset(rows, paths, dataset, reader)
    rows, paths = [rows[i] for i in keep], [paths[i] for i in keep]
    _duplicates(rows, paths)
    evals, bits = _join(evaluate, "evaluate", rows, paths, reader), _join(bitwise, "bitwise", rows, paths, reader)
    df = pd.DataFrame(rows, columns=list(RUN_COLUMNS))
    columns = [(evals, "top1_eval", "top1"), (evals, "top5_eval", "top5")]
    if any("top1_stored" in e for _, e in evals.values()):
        columns += [(evals, "top1_fitted", "top1_fitted"), (evals, "top1_stored", "top1_stored")]
    if bits:
        columns += [(bits, "top1_bitwise", "top1"), (bits, "top1_agreement", "top1_agreement")]
    for source, column, key in columns:
        df[column] = [_pct(source[r][1].get(key)) if r in source else float("nan") for r in df["run_id"]]
    if bits:
        df["bitwise_scale_mode"] = [bits[r][1].get("scale_mode") or "" if r in bits else "" for r in df["run_id"]]
    keep = _complete(df, paths, reader)
    df = df.iloc[keep].reset_index(drop=True)
    ids = set(df["run_id"])
    return RunSet(df, reader.excluded, [f for r, (f, _) in evals.items() if r in ids],
                  [f for r, (f, _) in bits.items() if r in ids])


def load_runs(train: Iterable[str | Path], evaluate: Iterable[str | Path] = (),
              bitwise: Iterable[str | Path] = (), *, dataset: str | None = None) -> pd.DataFrame:
    """One row per training run, identity read from its ``metrics.json``; every file validated
    (:func:`read_runs`; an invalid one raises :class:`~lsqbq.errors.RunFileError` naming the file and the key).

    ``evaluate`` files (``lsqbq evaluate`` outputs, which name the training run as ``source_run_id``) add
    ``top1_eval`` / ``top5_eval``: the stored checkpoint re-evaluated from disk; with ``--scales both`` also
    ``top1_fitted`` / ``top1_stored`` (activation scales fitted per sample / the moving averages of training).
    ``bitwise`` files (``python -m lsqbq.kernels.evaluation``) add ``top1_bitwise``, ``top1_agreement`` (% of test
    images where the bitwise and simulated models predict the same class) and ``bitwise_scale_mode``.
    """
    return read_runs(train, evaluate, bitwise, dataset=dataset).runs


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


def load_analysis(files: Iterable[str | Path], runs: pd.DataFrame, excluded: list[str] | None = None) -> pd.DataFrame:
    """Concatenate ``lsqbq analyze`` CSVs, each row given the ``model`` and ``seed`` of the run it analysed, in
    model order (the order of ``files`` does not matter).

    The run is found by the MLflow run id every analysis row carries (``run_id``, from the analysed checkpoint's
    metrics.json); an analysis of a run not in ``runs`` is a :class:`~lsqbq.errors.DataError`, or, when a list
    ``excluded`` is given (the runs ``--exclude-invalid`` left out), left out too and added to that list.
    """
    by_id = {r.run_id: r for r in runs.itertuples() if r.run_id}
    frames = []
    for f in files:
        df = read_csv(f)
        ids = set(df["run_id"]) if "run_id" in df else {""}
        unknown = sorted(i for i in ids if i not in by_id)
        if unknown:
            if excluded is None:
                raise DataError(f"{f}: analyses run {unknown[0] or '(no run id)'}, which is none of the training "
                                "runs given with --train; pass the metrics.json of the analysed model")
            excluded.append(f"{f}: analyses run {unknown[0] or '(no run id)'}, which is left out or not given")
            continue
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
