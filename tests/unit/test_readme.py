"""The README's result blocks are copies of the generated files (scripts/sync_readme.py)."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_readme_results_are_the_generated_files():
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "sync_readme.py"), "--check"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_readme_quick_start_commands_exist_in_makefile():
    readme = (ROOT / "README.md").read_text()
    makefile = (ROOT / "Makefile").read_text()
    for target in ("reproduce", "test"):
        assert f"make {target}" in readme
        assert f"\n{target}:" in makefile
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in ci
