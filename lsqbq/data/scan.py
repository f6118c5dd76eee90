"""List the images of one ImageFolder split, refusing what would make the listing lie.

``scan_split(split_dir, class_to_idx, allowed)`` walks ``split_dir/<class>/**`` in sorted order and returns
``[(path, class index), ...]`` for files whose name ends in an image extension (torchvision's list). Symbolic
links are followed only where they stay inside ``allowed`` (the dataset root and the split folder, both
resolved); it refuses with a :class:`DataError` naming the path:

- a link, file or folder that resolves outside ``allowed`` (``/dev/zero`` linked in, ``../../etc``);
- a folder link that points to one of its own ancestors, or a folder reached twice (a loop such as
  ``train/a/up -> ..`` would otherwise list every image again on each turn);
- a broken link, a link cycle, or an image name that is not a regular file (a named pipe, socket or device:
  reading it would block or never end);
- a class folder without any image.
"""
from __future__ import annotations

import os
from pathlib import Path

from ._common import DataError
from .images import check_regular_file

__all__ = ["IMG_EXTENSIONS", "scan_split", "resolve_inside"]

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def _within(path: Path, bases: tuple[Path, ...]) -> bool:
    return any(path == b or path.is_relative_to(b) for b in bases)


def resolve_inside(path: Path, allowed: tuple[Path, ...]) -> Path:
    """The real path of ``path``; :class:`DataError` when it is broken, cyclic or outside ``allowed``."""
    try:
        real = path.resolve(strict=True)
    except FileNotFoundError:
        raise DataError(f"{path}: broken symbolic link (its target does not exist); fix or delete it") from None
    except (RuntimeError, OSError) as e:   # a link cycle: RuntimeError before Python 3.13, OSError (ELOOP) after
        raise DataError(f"{path}: symbolic link loop ({e}); delete the link") from None
    if not _within(real, allowed):
        raise DataError(f"{path}: resolves to {real}, outside the dataset root "
                        f"{' / '.join(map(str, allowed))}; copy the file into the dataset or delete the link")
    return real


def scan_split(split_dir: Path, class_to_idx: dict[str, int], allowed: tuple[Path, ...]) -> list[tuple[str, int]]:
    """-> sorted ``(path, class index)`` pairs of the images under ``split_dir/<class>/`` (module docstring)."""
    split_real = resolve_inside(split_dir, allowed)
    seen: dict[Path, Path] = {split_real: split_dir}
    samples: list[tuple[str, int]] = []
    for cls in sorted(class_to_idx):
        found = len(samples)
        _walk(split_dir / cls, class_to_idx[cls], allowed, seen, samples, ancestors=(split_real,))
        if len(samples) == found:
            raise DataError(f"{split_dir / cls}: class folder without any image (extensions "
                            f"{', '.join(IMG_EXTENSIONS)}); add images or delete the folder")
    return samples


def _walk(folder: Path, label: int, allowed, seen: dict[Path, Path], samples: list, ancestors: tuple[Path, ...]):
    real = resolve_inside(folder, allowed)
    if real in ancestors:
        raise DataError(f"{folder}: symbolic link loop: it points to {real}, a folder that contains it; "
                        f"delete the link")
    if real in seen:
        raise DataError(f"{folder}: the folder {real} is reached twice (also as {seen[real]}); a symbolic link "
                        f"would list its images twice, delete one of them")
    seen[real] = folder
    entries = sorted(os.scandir(folder), key=lambda e: e.name)
    is_dir = {e.name: _is_dir(e, allowed) for e in entries}
    subfolders = [Path(e.path) for e in entries if is_dir[e.name]]
    for entry in entries:   # files first, then sub-folders (torchvision's order for one level of nesting)
        if entry.name.lower().endswith(IMG_EXTENSIONS) and not is_dir[entry.name]:
            path = Path(entry.path)
            if entry.is_symlink():
                resolve_inside(path, allowed)
            check_regular_file(path)
            samples.append((str(path), label))
    for sub in subfolders:
        _walk(sub, label, allowed, seen, samples, ancestors + (real,))


def _is_dir(entry: os.DirEntry, allowed: tuple[Path, ...]) -> bool:
    """``entry.is_dir()`` following links; a link that cannot be followed (a cycle) is a :class:`DataError`."""
    try:
        return entry.is_dir(follow_symlinks=True)
    except OSError:
        resolve_inside(Path(entry.path), allowed)   # raises, naming the link
        raise
