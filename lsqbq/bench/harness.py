"""One harness for every benchmark: its common options, the machine and code it ran on, its files and its run.

Each ``lsqbq bench <name>`` invocation

* takes the common options from :func:`parser`: ``--out``, ``--threads`` (one count or a list), ``--repeats``,
  ``--quick``, ``--smoke`` (tiny shapes, one repeat: a check that the benchmark runs and records its run, not a
  measurement), and where kernels are timed ``--backend`` and ``--render-only``;
* opens one :class:`BenchRun`, which records the machine (:func:`~lsqbq.bench.machine.machine_record`: CPU model,
  flags, cores, torch and its threads, the kernel back end and its ISA path), the git commit and dirty flag, and the
  load average, the CPU tick counters (for the steal share of the run) and the memory probe
  (:func:`~lsqbq.bench.machine.memory_latency`) before the first timing, and all three again after the last;
* gives every CSV row those machine columns and :data:`PROVENANCE` (:meth:`BenchRun.table`);
* writes its CSV, markdown and figures atomically: a reader (or a later table build) sees the previous complete
  file or the new one, never half of one (:meth:`BenchRun.write_csv`, :meth:`~BenchRun.write_text`,
  :meth:`~BenchRun.write_figure`);
* records exactly one MLflow run (:meth:`BenchRun.record`, through :func:`lsqbq.tracking.record_run`) named
  ``bench_<name>`` in experiment :func:`experiment_name` (``lsqbq-bench-<name>``), with the options and machine as
  parameters, the benchmark's headline ratios and the load as metrics, tags ``lsqbq.kind`` / ``lsqbq.isa`` (and the
  git commit, dirty flag and versions that every recorded run carries), and every file it wrote as an artifact.
  ``LSQBQ_TRACKING=0``: no run; a store error is a warning, so timings are never lost to a busy store. (A
  ``models`` run that timed exactly one checkpoint whose training run is in the same store is filed under that
  run instead, as its child: :func:`~lsqbq.tracking.record_run`'s rule for a single source run.)
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any, Callable, Iterable

import pandas as pd
import torch

from ..atomic import atomic_write, write_text_atomic
from .machine import PROBE_BYTES, cpu_ticks, load, machine_record, memory_latency, steal_percent

__all__ = ["CONDITIONS", "EXPERIMENT_PREFIX", "PROVENANCE", "BenchRun", "experiment_name", "headline_cells",
           "int_at_least", "int_list", "parser", "provenance_line", "thread_counts", "write_csv", "write_figure",
           "write_text"]

EXPERIMENT_PREFIX = "lsqbq-bench-"
# the host's conditions around a run (load, steal, memory probe): CSV columns and MLflow metrics of the run
CONDITIONS = ("load_before", "load_after", "steal_pct", "mem_ns_before", "mem_ns_after")
# columns every benchmark CSV row carries (besides the machine record's)
PROVENANCE = ("git_commit", "git_dirty", "isa", *CONDITIONS)


def experiment_name(benchmark: str) -> str:
    """The MLflow experiment holding the runs of ``lsqbq bench <benchmark>``: ``lsqbq-bench-<benchmark>``."""
    return EXPERIMENT_PREFIX + benchmark


# ------------------------------------------------------------------------------------------------ options


def int_list(minimum: int) -> Callable[[str], list[int]]:
    """An argparse ``type``: ``"1,2,4"`` -> ``[1, 2, 4]``, every value an integer >= ``minimum`` (otherwise a
    usage error that quotes the value)."""
    def parse(text: str) -> list[int]:
        try:
            values = [int(v) for v in text.split(",")]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
        for v in values:
            if v < minimum:
                raise argparse.ArgumentTypeError(f"every value must be >= {minimum}, got {v}")
        return values
    return parse


def int_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse ``type``: one integer >= ``minimum`` (otherwise a usage error that quotes the value)."""
    def parse(text: str) -> int:
        values = int_list(minimum)(text)
        if len(values) != 1:
            raise argparse.ArgumentTypeError(f"expected one integer, got {text!r}")
        return values[0]
    return parse


def parser(name: str, doc: str | None, *, threads: str = "list", threads_default: int | None = None,
           repeats: int | None = 7, quick: str = "fewer shapes and repeats", backend: bool = False,
           render_only: str | None = None) -> argparse.ArgumentParser:
    """The argument parser of ``lsqbq bench <name>`` with the common options; the benchmark adds its own.

    Args:
        threads: ``"list"`` (``--threads 1,2``: thread counts timed side by side) or ``"one"`` (``--threads N``,
            default ``threads_default``; None: torch's default).
        repeats: default of ``--repeats`` (None: no such option).
        quick: help text of ``--quick``.
        backend: add ``--backend`` (the kernel back end; default the switch ``LSQBQ_BACKEND``).
        render_only: the files ``--render-only`` rewrites from the CSV in ``--out`` (None: no such option).
    """
    p = argparse.ArgumentParser(prog=f"lsqbq bench {name}", description=(doc or "").splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("results/bench"), help="output directory")
    if threads == "list":
        p.add_argument("--threads", type=int_list(1), default=None,
                       help="thread counts to time side by side, e.g. 1,2 (default: 1, 2 and all)")
    else:
        default = "torch's default" if threads_default is None else threads_default
        p.add_argument("--threads", type=int_at_least(1), default=threads_default,
                       help=f"torch threads (default: {default})")
    if repeats is not None:
        p.add_argument("--repeats", type=int_at_least(1), default=repeats, help="timed repeats per candidate")
    p.add_argument("--quick", action="store_true", help=quick)
    p.add_argument("--smoke", action="store_true",
                   help="tiny shapes, one repeat: checks that the benchmark runs and records its run "
                        "(the numbers mean nothing)")
    if backend:
        p.add_argument("--backend", default=None,
                       help="kernel back end: auto, reference, portable, neon, avx2 or avx512 (default: the switch "
                            "LSQBQ_BACKEND, else the fastest available)")
    if render_only:
        p.add_argument("--render-only", action="store_true",
                       help=f"rewrite {render_only} from the CSV already in --out (no timing, no run)")
    return p


def thread_counts(requested: list[int] | None, single: bool) -> list[int]:
    """The thread counts to time: ``requested``, else ``[1]`` when ``single`` (quick / smoke runs) or torch has
    one thread, else 1, 2 and torch's default."""
    if requested:
        return list(requested)
    n = torch.get_num_threads()
    return [1] if single or n == 1 else sorted({1, 2, n})


# ------------------------------------------------------------------------------------------------- files


def headline_cells(value: float, target: float | None, fraction: bool = False) -> dict[str, str]:
    """The ``measured``, ``target`` and ``met`` cells of a headline row: ratios as ``12.34x``, fractions as
    ``85 %``. A miss never reads as the target: its figure gets as many more decimals as it needs to show below
    it (``9.996x`` under ``10x``, not ``10.00x``), and its share of the target is rounded down (``99%``)."""
    def fmt(v: float, digits: int) -> str:
        return f"{100 * v:.{digits}f} %" if fraction else f"{v:.{digits}f}x"

    digits = 0 if fraction else 2
    missed = target is not None and value < target
    while missed and digits < 6 and float(fmt(value, digits).rstrip(" x%")) >= (100 * target if fraction else target):
        digits += 1
    cells = {"measured": fmt(value, digits), "target": "", "met": ""}
    if target is not None:
        cells["target"] = f">= {100 * target:.0f} %" if fraction else f">= {target:g}x"
        cells["met"] = "yes" if not missed else f"no ({math.floor(100 * value / target)}% of it)"
    return cells


def write_text(path: Path, text: str) -> Path:
    """Write a text file atomically (its directory is created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_text_atomic(path, text)


def write_csv(path: Path, df: pd.DataFrame, **to_csv: Any) -> Path:
    """Write ``df`` (no index) as CSV atomically; ``to_csv`` goes to ``DataFrame.to_csv`` (``float_format``)."""
    return write_text(path, df.to_csv(index=False, **to_csv))


def write_figure(path: Path, fig) -> Path:
    """Save a matplotlib figure as PNG atomically (its directory is created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(path, "wb", lambda f: fig.savefig(f, format="png", dpi=120))


def provenance_line(df: pd.DataFrame) -> str:
    """One markdown line naming the commit, kernel path and load of a benchmark CSV (empty for a CSV written
    before these columns existed)."""
    if df.empty or "git_commit" not in df:
        return ""
    r = df.iloc[0]
    dirty = " with local changes" if str(r.get("git_dirty")).lower() == "true" else ""
    return (f"Commit `{str(r['git_commit'])[:12]}`{dirty}; kernels `{r.get('kernels', '')}` "
            f"(ISA path `{r.get('isa', '')}`); load average {_fmt(r.get('load_before'))} before, "
            f"{_fmt(r.get('load_after'))} after the run{_steal(r.get('steal_pct'))}"
            f"{_memory(r.get('mem_ns_before'), r.get('mem_ns_after'))}.")


def _memory(before: Any, after: Any) -> str:
    """The provenance line's memory-probe clause (empty where the probe was not recorded)."""
    b, a = _fmt(before), _fmt(after)
    if b == "n/a" and a == "n/a":
        return ""
    mb = PROBE_BYTES >> 20
    return (f"; a dependent random load over {mb} MB took {_ns(before)} before and {_ns(after)} after it (longer: "
            f"other tenants held more of the shared cache)")


def _ns(v: Any) -> str:
    s = _fmt(v)
    return s if s == "n/a" else f"{float(v):.0f} ns"


def _steal(v: Any) -> str:
    """The provenance line's steal clause for a recorded steal share (empty where none was recorded)."""
    s = _fmt(v)
    return "" if s == "n/a" else f"; the host took {float(v):.1f} % of the CPU time (steal) during it"


def _fmt(v: Any) -> str:
    try:
        return "n/a" if math.isnan(float(v)) else f"{float(v):.2f}"
    except (TypeError, ValueError):
        return "n/a"


# --------------------------------------------------------------------------------------------------- run


class BenchRun:
    """One benchmark invocation: machine and code recorded at the start, outputs written atomically, one run.

    Use as a context manager: torch's thread count is restored on exit (the benchmarks change it per group).

    Args:
        name: the benchmark (``kernels``, ``models``, ...): run ``bench_<name>`` in :func:`experiment_name`.
        out: output directory (created on the first write, so a usage error leaves nothing behind).
        backend: ``--backend`` (None: the switch ``LSQBQ_BACKEND``); resolved here, so a bad value fails before
            any timing.
        threads: torch threads for the whole run (None: leave torch's default).
        options: the parsed options, logged as run parameters.
    """

    def __init__(self, name: str, out: Path, *, backend: str | None = None, threads: int | None = None,
                 options: dict[str, Any] | None = None):
        self.name, self.out = name, Path(out)
        self._threads0 = torch.get_num_threads()
        if threads:
            torch.set_num_threads(threads)
        try:
            self.machine = machine_record(backend)
        except BaseException:
            torch.set_num_threads(self._threads0)
            raise
        from ..tracking import git_info

        self.code = git_info()
        self.options = dict(options or {})
        self.files: list[Path] = []
        self.load_before = load()
        self.load_after: float | None = None
        self._ticks_before = cpu_ticks()
        self.steal_pct: float | None = None
        self.mem_ns_before = memory_latency()
        self.mem_ns_after: float | None = None

    def __enter__(self) -> "BenchRun":
        return self

    def __exit__(self, *exc) -> None:
        torch.set_num_threads(self._threads0)

    @property
    def backend(self) -> str:
        """The kernel back end the run times (``reference``, ``portable``, ``neon``, ``avx2`` or ``avx512``)."""
        return self.machine["kernels"]

    @property
    def isa(self) -> str:
        """The instruction path of :attr:`backend` (e.g. ``avx512-vpopcntdq``, ``portable-popcnt``)."""
        return self.machine["isa"]

    def provenance(self) -> dict[str, Any]:
        """:data:`PROVENANCE` of this run; ``load_after`` is measured on the first call after the timings."""
        if self.load_after is None:
            self.load_after = load()
            self.steal_pct = steal_percent(self._ticks_before, cpu_ticks())
            self.mem_ns_after = memory_latency()
        return {**self.code, "isa": self.isa, "load_before": self.load_before, "load_after": self.load_after,
                "steal_pct": self.steal_pct, "mem_ns_before": self.mem_ns_before, "mem_ns_after": self.mem_ns_after}

    def table(self, rows: Iterable[dict] | pd.DataFrame) -> pd.DataFrame:
        """The rows as a frame with the machine record and :data:`PROVENANCE` on every row (a column the rows
        already have is kept)."""
        df = rows.copy() if isinstance(rows, pd.DataFrame) else pd.DataFrame(list(rows))
        for key, value in {**self.machine, **self.provenance()}.items():
            if key not in df:
                df[key] = value
        return df

    def path(self, filename: str) -> Path:
        return self.out / filename

    def _keep(self, path: Path) -> Path:
        if path not in self.files:
            self.files.append(path)
        return path

    def write_csv(self, filename: str, df: pd.DataFrame, **to_csv: Any) -> Path:
        """Write ``out/filename`` atomically and log it as an artifact of the run."""
        return self._keep(write_csv(self.path(filename), df, **to_csv))

    def write_text(self, filename: str, text: str) -> Path:
        """Write ``out/filename`` (markdown, a profile) atomically and log it as an artifact of the run."""
        return self._keep(write_text(self.path(filename), text))

    def write_figure(self, filename: str, fig) -> Path:
        """Save a matplotlib figure as ``out/filename`` (PNG) atomically and log it as an artifact of the run."""
        return self._keep(write_figure(self.path(filename), fig))

    def keep(self, path: Path) -> Path:
        """Log a file written elsewhere (by :func:`write_text`, a renderer) as an artifact of the run."""
        return self._keep(Path(path))

    def params(self) -> dict[str, Any]:
        """Run parameters: the options (lists comma-joined) and the machine record."""
        opts = {k: (",".join(map(str, v)) if isinstance(v, (list, tuple)) else v)
                for k, v in self.options.items() if v is not None}
        return {**opts, **{k: v for k, v in self.machine.items() if isinstance(v, (str, int, float))}}

    def record(self, metrics: dict[str, Any], *, params: dict[str, Any] | None = None,
               source_run_ids: Iterable[str | None] = ()) -> str | None:
        """Log the one MLflow run of this invocation; returns its id (None: tracking off or the store failed).

        Metrics: ``metrics`` (headline ratios) plus :data:`CONDITIONS` (load, steal, memory probe); artifacts:
        every file this run wrote; ``source_run_ids``: the training runs whose checkpoints were timed.
        """
        from ..tracking import record_run

        prov = self.provenance()
        return record_run(
            experiment_name(self.name), f"bench_{self.name}", strict=False,
            params={**self.params(), **(params or {})},
            metrics={**metrics, **{k: prov[k] for k in CONDITIONS}},
            artifacts=list(self.files),
            tags={"lsqbq.kind": f"bench {self.name}", "lsqbq.isa": self.isa, "lsqbq.kernels": self.backend,
                  "quick": self.options.get("quick"), "smoke": self.options.get("smoke")},
            source_run_ids=source_run_ids)
