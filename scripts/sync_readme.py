"""Copy generated result files into README.md between include markers.

    <!-- include: results/tables/fashion-mnist/qat.md -->
    ...replaced by the file's content...
    <!-- end include -->

``<!-- include: PATH headings=+N -->`` moves the file's markdown headings N levels down (``# Title`` becomes
``### Title`` with +2), so that a generated document nests under the README section that includes it.

Usage: python scripts/sync_readme.py [--check]   (--check: exit 1 if README.md is out of date)
The README's results are therefore generated, never typed; tests/unit/test_readme.py runs --check.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(
    r"(<!-- include: (?P<path>\S+)(?: headings=\+(?P<shift>\d))? -->\n)(?P<body>.*?)(<!-- end include -->)", re.S)
HEADING = re.compile(r"^(#{1,6}) ", re.M)


def shift_headings(text: str, levels: int) -> str:
    """Add ``levels`` '#' to every ATX heading (at most six in all)."""
    return HEADING.sub(lambda m: "#" * min(6, len(m.group(1)) + levels) + " ", text) if levels else text


def render(text: str) -> str:
    def fill(m: re.Match) -> str:
        path = ROOT / m.group("path")
        if not path.is_file():
            raise SystemExit(f"README.md includes {m.group('path')}, which does not exist")
        body = shift_headings(path.read_text().strip("\n"), int(m.group("shift") or 0)) + "\n"
        return m.group(1) + body + m.group(5)

    return BLOCK.sub(fill, text)


def main(argv: list[str]) -> int:
    readme = ROOT / "README.md"
    text = readme.read_text()
    new = render(text)
    if "--check" in argv:
        if new != text:
            print("README.md is out of date: run `python scripts/sync_readme.py`", file=sys.stderr)
            return 1
        return 0
    readme.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
