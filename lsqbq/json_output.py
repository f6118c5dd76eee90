"""The JSON result of a command: printed, and written atomically where ``--out`` says."""
from __future__ import annotations

import json
from pathlib import Path

from .errors import ConfigError

__all__ = ["check_out", "emit_json"]


def check_out(out: str | None) -> None:
    """Refuse an ``--out`` that names a directory before any work is done."""
    if out and Path(out).is_dir():
        raise ConfigError(f"--out {out}: is a directory; give a file name such as {Path(out) / 'eval.json'}")


def emit_json(result: dict, out: str | None, echo: bool = True) -> None:
    """Print ``result`` as JSON (unless ``echo`` is false) and, with ``out``, write it there atomically."""
    from .atomic import write_text_atomic

    text = json.dumps(result, indent=2)
    if echo:
        print(text)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out, text + "\n")
