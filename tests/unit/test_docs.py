"""The Python examples of README.md and docs/*.md run as written (each in a fresh interpreter, pure-torch back end)."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
EXAMPLES = [(page.relative_to(ROOT).as_posix(), i, code) for page in PAGES
            for i, code in enumerate(re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S))]


def test_the_readme_and_architecture_doc_have_their_examples():
    per_page = {name: sum(1 for n, _, _ in EXAMPLES if n == name) for name, _, _ in EXAMPLES}
    assert per_page.get("README.md", 0) >= 1 and per_page.get("docs/architecture.md", 0) >= 2, per_page


@pytest.mark.parametrize("code", [c for _, _, c in EXAMPLES], ids=[f"{n}:example{i}" for n, i, _ in EXAMPLES])
def test_example_runs(code):
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT,
                       env={**os.environ, "LSQBQ_BACKEND": "reference"})
    assert r.returncode == 0, r.stderr
