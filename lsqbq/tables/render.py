"""Rendering: number formats, CSV files and markdown documents (pipe tables through ``DataFrame.to_markdown``).

Every CSV and markdown file the project generates goes through :func:`write_csv` and :func:`write_markdown`, so
the same inputs give byte-identical files.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import pandas as pd

from ..analysis import report
from ..analysis.report import _missing, fmt_mean_std, fmt_value, write_csv

__all__ = ["TEXT_COLUMNS", "fmt_mean_std", "fmt_value", "fmt_signed", "fmt_percent", "fmt_interval",
           "excluded_notes", "markdown_table", "markdown_document", "write_markdown", "write_csv", "read_csv"]

#: Columns read as text: bit-width labels ("T", "32"), seed lists and provenance hashes / ids.
TEXT_COLUMNS = ("k_a", "k_w", "levels", "seed", "seeds", "commit", "config_hash", "data_hash", "run_id",
                "teacher_run_id", "source_run_id", "layer", "scheme", "x_quant", "w_quant", "model", "dataset",
                "source", "kernel")


def fmt_signed(v, digits: int = 2, unit: str = "") -> str:
    """``"+0.70"`` / ``"−1.20"`` (true minus sign) with an optional unit."""
    if _missing(v):
        return ""
    s = f"{v:+.{digits}f}".replace("-", "−")
    return f"{s}{unit}"


def fmt_percent(ratio, digits: int = 1) -> str:
    """A ratio minus one as a signed percentage: ``0.023 -> "+2.3 %"``."""
    return "" if _missing(ratio) else fmt_signed(100 * ratio, digits, " %")


def fmt_interval(lo, hi, digits: int = 2, unit: str = "") -> str:
    """``"[−0.62, +0.76]"`` (``""`` when either end is missing)."""
    if _missing(lo) or _missing(hi):
        return ""
    return f"[{fmt_signed(lo, digits)}, {fmt_signed(hi, digits)}]{unit}"


def excluded_notes(excluded: Sequence[str]) -> list[str]:
    """Closing note blocks listing what ``--exclude-invalid`` left out (one message per file, each naming it);
    none when nothing was."""
    if not excluded:
        return []
    files = "1 result file" if len(excluded) == 1 else f"{len(excluded)} result files"
    return [f"**Left out** (`--exclude-invalid`): {files}, invalid or of a run left out; their runs are in no "
            "cell and no count of these tables:", "\n".join(f"- {m}" for m in excluded)]


def _cells(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` as text, exactly as its cells read (NaN -> empty cell)."""
    return df.astype(object).where(df.notna(), "").astype(str)


def markdown_table(df: pd.DataFrame) -> str:
    """A pipe table of ``df`` exactly as its cells read (no number parsing; NaN -> empty cell)."""
    return _cells(df).to_markdown(index=False, disable_numparse=True)


def markdown_document(title: str, blocks: Sequence[str | pd.DataFrame]) -> str:
    """``# title`` followed by paragraphs (strings; ``"## ..."`` for sub-headings) and tables, one blank line
    between blocks and a final newline."""
    parts = [f"# {title}"]
    for b in blocks:
        parts.append(markdown_table(b) if isinstance(b, pd.DataFrame) else str(b).strip("\n"))
    return "\n\n".join(parts) + "\n"


def write_markdown(path: str | Path, title: str, blocks: Sequence[str | pd.DataFrame]) -> Path:
    """Write :func:`markdown_document` to ``path`` (creating its directory)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(markdown_document(title, blocks))
    return path


def html_document(title: str, blocks: Sequence[str | pd.DataFrame]) -> str:
    """The blocks of :func:`markdown_document` as a standalone HTML page (tables by ``DataFrame.to_html``,
    paragraphs escaped; ``"## ..."`` becomes ``<h2>``), for ``snakemake --report``, which shows HTML inline."""
    import html

    style = ("body{font-family:sans-serif;font-size:14px;margin:1em}table{border-collapse:collapse;margin:1em 0}"
             "th,td{border:1px solid #ccc;padding:3px 8px;text-align:left}th{background:#f3f3f3}")
    parts = [f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
             f"<style>{style}</style></head><body>", f"<h1>{html.escape(title)}</h1>"]
    for b in blocks:
        if isinstance(b, pd.DataFrame):
            parts.append(_cells(b).to_html(index=False, border=0))
        else:
            text = str(b).strip("\n")
            parts.append(f"<h2>{html.escape(text[3:])}</h2>" if text.startswith("## ")
                         else f"<p>{html.escape(text)}</p>")
    return "\n".join(parts) + "\n</body></html>\n"


def write_html(path: str | Path, title: str, blocks: Sequence[str | pd.DataFrame]) -> Path:
    """Write :func:`html_document` to ``path`` (creating its directory)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(html_document(title, blocks))
    return path


def read_csv(path: str | Path) -> pd.DataFrame:
    """Read a generated CSV with the :data:`TEXT_COLUMNS` kept as text (empty cells -> ``""``)."""
    return report.read_csv(path, TEXT_COLUMNS)
