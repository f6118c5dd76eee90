"""Rewrite published checkpoints in the compact format 2 (lsqbq.checkpoint.split_state), keeping every bit.

    python scripts/compact_checkpoints.py checkpoints/fashion-mnist     # every checkpoint.pt below it

Each file is loaded, written compact beside itself, read back and compared tensor by tensor (bit patterns, so
NaN payloads count) and key by key before it replaces the original; a file that is already compact is left alone.
Working ``resume.pt`` files are not touched (they stay plain: written every epoch, never published).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from lsqbq import checkpoint as ckpt_io


def same(a, b) -> bool:
    """Equal values, tensors compared bit for bit."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype
                and a.shape == b.shape and torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8)))
    if isinstance(a, dict):
        return isinstance(b, dict) and list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


def compact(path: Path) -> tuple[int, int]:
    """Rewrite ``path`` compact; returns (bytes before, bytes after)."""
    before = path.stat().st_size
    obj = ckpt_io.load(path)
    if obj["format"] >= 2:
        return before, before
    tmp = path.with_name(f".{path.name}.compact")
    try:
        ckpt_io.save_atomic(obj, tmp, compact=True)
        if not same({**obj, "format": ckpt_io.FORMAT}, ckpt_io.load(tmp)):
            raise SystemExit(f"{path}: the compact copy differs from the original; nothing replaced")
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return before, path.stat().st_size


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("roots", nargs="+", type=Path, help="checkpoint files or directories searched for checkpoint.pt")
    args = p.parse_args(argv)
    files = [f for r in args.roots for f in ([r] if r.is_file() else sorted(r.rglob("checkpoint.pt")))]
    if not files:
        p.error(f"no checkpoint.pt under {', '.join(map(str, args.roots))}")
    total = [0, 0]
    for f in files:
        before, after = compact(f)
        total[0] += before
        total[1] += after
        print(f"{f}: {before} -> {after} bytes")
    print(f"{len(files)} checkpoints: {total[0] / 1e6:.2f} -> {total[1] / 1e6:.2f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
