"""Copy generated result files into README.md and docs/*.md between include markers.

    <!-- include: results/tables/fashion-mnist/qat.md -->
    ...replaced by the file's content...
    <!-- end include -->

PATH is relative to the project root, whichever page includes it. Options, after the path:

- ``headings=+N`` moves the file's markdown headings N levels down (``# Title`` becomes ``### Title`` with +2), so
  that a generated document nests under the section that includes it;
- ``columns="a; b"`` and ``rows="x; y"`` copy only the file's first markdown table, with the named columns (in
  that order) and the rows whose first cell is one of the names (in the file's order); either may be left out.
  A name the table does not have is an error, so a renamed column or row cannot silently drop out.

Usage: python scripts/sync_readme.py [--check]   (--check: exit 1, naming the pages, if any page is out of date)
The pages' results are therefore generated, never typed; tests/unit/test_readme.py runs --check.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(
    r"(?P<open><!-- include: (?P<path>\S+)(?P<opts>(?: \w+=(?:\"[^\"]*\"|\S+))*) -->\n)(?P<body>.*?)"
    r"(?P<close><!-- end include -->)", re.S)
OPTION = re.compile(r" (\w+)=(?:\"([^\"]*)\"|(\S+))")
HEADING = re.compile(r"^(#{1,6}) ", re.M)
KNOWN_OPTIONS = {"headings", "columns", "rows"}


class IncludeError(SystemExit):
    """An include block that cannot be filled: the message names the page, the file and what is wrong."""


def pages() -> list[Path]:
    """README.md and every markdown page of docs/, in a fixed order."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def shift_headings(text: str, levels: int) -> str:
    """Add ``levels`` '#' to every ATX heading (at most six in all)."""
    return HEADING.sub(lambda m: "#" * min(6, len(m.group(1)) + levels) + " ", text) if levels else text


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def _names(value: str | None) -> list[str] | None:
    return None if value is None else [n.strip() for n in value.split(";") if n.strip()]


def select_table(text: str, columns: list[str] | None, rows: list[str] | None, where: str) -> str:
    """The first pipe table of ``text`` cut to ``columns`` and ``rows`` (None: all), re-aligned.

    Raises IncludeError naming ``where`` when the text has no table or lacks a named column or row."""
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("|")), None)
    if start is None or start + 1 >= len(lines) or not lines[start + 1].startswith("|"):
        raise IncludeError(f"{where}: no markdown table to select from")
    end = start
    while end < len(lines) and lines[end].startswith("|"):
        end += 1
    header, rule, body = _cells(lines[start]), _cells(lines[start + 1]), [_cells(x) for x in lines[start + 2:end]]
    keep = list(range(len(header))) if columns is None else []
    for name in columns or []:
        if name not in header:
            raise IncludeError(f"{where}: no column {name!r} (columns: {', '.join(header)})")
        keep.append(header.index(name))
    if rows is not None:
        firsts = [r[0] for r in body]
        missing = [n for n in rows if n not in firsts]
        if missing:
            raise IncludeError(f"{where}: no row {missing[0]!r} (first cells: {', '.join(firsts)})")
        body = [r for r in body if r[0] in rows]
    table = [[header[k] for k in keep], *[[r[k] for k in keep] for r in body]]
    widths = [max(len(r[j]) for r in table) for j in range(len(keep))]
    aligns = [rule[k] for k in keep]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"

    def dashes(spec: str, width: int) -> str:
        left, right = spec.startswith(":"), spec.endswith(":") and len(spec) > 1
        return (":" if left else "-") + "-" * width + (":" if right else "-")

    return "\n".join([line(table[0]), "|" + "|".join(dashes(a, w) for a, w in zip(aligns, widths)) + "|",
                      *(line(r) for r in table[1:])])


def render_include(path_text: str, opts: str, page: str) -> str:
    """The text that belongs between the markers of one include block (without the markers)."""
    where = f"{page} includes {path_text}"
    options = {m.group(1): m.group(2) if m.group(2) is not None else m.group(3) for m in OPTION.finditer(opts)}
    unknown = sorted(set(options) - KNOWN_OPTIONS)
    if unknown:
        raise IncludeError(f"{where}: unknown option {unknown[0]!r} (known: {', '.join(sorted(KNOWN_OPTIONS))})")
    path = ROOT / path_text
    if not path.is_file():
        raise IncludeError(f"{where}, which does not exist")
    text = path.read_text().strip("\n")
    if "columns" in options or "rows" in options:
        text = select_table(text, _names(options.get("columns")), _names(options.get("rows")), where)
    shift = options.get("headings", "+0")
    if not re.fullmatch(r"\+\d", shift):
        raise IncludeError(f"{where}: headings={shift}: expected +N with one digit N")
    return shift_headings(text, int(shift[1:])) + "\n"


def render(text: str, page: str = "README.md") -> str:
    """``text`` with every include block refilled from its file."""
    return BLOCK.sub(lambda m: m.group("open") + render_include(m.group("path"), m.group("opts"), page)
                     + m.group("close"), text)


def main(argv: list[str]) -> int:
    stale = []
    for page in pages():
        name = page.relative_to(ROOT).as_posix()
        text = page.read_text()
        new = render(text, name)
        if new == text:
            continue
        stale.append(name)
        if "--check" not in argv:
            page.write_text(new)
    if "--check" in argv and stale:
        print(f"out of date: {', '.join(stale)}; run `python scripts/sync_readme.py`", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
