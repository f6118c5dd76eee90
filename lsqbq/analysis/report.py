"""Files the analyses write: ``PREFIX.csv`` (every number, full precision) and ``PREFIX.md`` rendered from it.

Formats (the same as the result tables'): CSV by ``DataFrame.to_csv`` without the index; markdown as ``# title``,
blocks separated by one blank line, pipe tables by ``DataFrame.to_markdown`` with cells exactly as they read (NaN
-> empty); numbers ``f"{v:.2f}"``, signed percentages with a true minus sign. The same inputs give byte-identical
files. Text columns (:data:`TEXT_COLUMNS`) are read back as text.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import pandas as pd

__all__ = ["TEXT_COLUMNS", "fmt_value", "fmt_mean_std", "fmt_percent", "write_csv", "read_csv", "write_markdown"]

#: Columns of the analysis CSVs read as text (labels, scheme names, provenance hashes and ids).
TEXT_COLUMNS = ("k_a", "k_w", "levels", "seed", "commit", "config_hash", "data_hash", "run_id", "layer", "scheme",
                "x_quant", "w_quant", "model", "source", "input", "input_run")


def _missing(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def fmt_value(v, digits: int = 2) -> str:
    """A number with ``digits`` decimals (``""`` for NaN / None)."""
    return "" if _missing(v) else f"{float(v):.{digits}f}"


def fmt_mean_std(mean, std, n: int, digits: int = 2) -> str:
    """``"91.23 ± 0.15"``; a single value (or no spread) prints alone."""
    if _missing(mean):
        return ""
    return f"{mean:.{digits}f}" if n <= 1 or _missing(std) else f"{mean:.{digits}f} ± {std:.{digits}f}"


def fmt_percent(ratio, digits: int = 1) -> str:
    """A ratio minus one as a signed percentage with a true minus sign: ``0.023 -> "+2.3 %"``."""
    return "" if _missing(ratio) else f"{100 * ratio:+.{digits}f}".replace("-", "−") + " %"


def write_csv(df: pd.DataFrame | list[dict], path: str | Path) -> Path:
    """``df`` (or a list of row dicts) as CSV without the index; floats keep full precision."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    (df if isinstance(df, pd.DataFrame) else pd.DataFrame(df)).to_csv(path, index=False)
    return path


def read_csv(path: str | Path, text_columns: Sequence[str] = TEXT_COLUMNS) -> pd.DataFrame:
    """A CSV written by :func:`write_csv`, ``text_columns`` as text (empty cells -> ``""``)."""
    head = pd.read_csv(path, nrows=0).columns
    dtype = {c: str for c in text_columns if c in head}
    df = pd.read_csv(path, dtype=dtype)
    for c in dtype:
        df[c] = df[c].fillna("")
    return df


def write_markdown(path: str | Path, title: str, blocks: Sequence[str | pd.DataFrame]) -> Path:
    """``# title`` and the blocks (paragraphs, or tables as pipe tables), one blank line apart, final newline."""
    parts = [f"# {title}"]
    for b in blocks:
        if isinstance(b, pd.DataFrame):
            cells = b.astype(object).where(b.notna(), "").astype(str)
            parts.append(cells.to_markdown(index=False, disable_numparse=True))
        else:
            parts.append(str(b).strip("\n"))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n\n".join(parts) + "\n")
    return path
