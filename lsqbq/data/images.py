"""Decode one image file to 8-bit RGB, from every mode Pillow reads, or refuse it naming the file.

Rules, by Pillow mode (``v`` a pixel value, ``a`` its alpha in [0, 255]):

    1, L, RGB, CMYK, YCbCr, P    Pillow's own conversion to RGB ('1' gives 0 / 255)
    I;16, I;16L, I;16B, I;16N   16-bit intensities: round(v * 255 / 65535), then grey -> RGB
    I                           32-bit integers holding 16-bit intensities (16-bit PNG, TIFF): as I;16;
                                values outside [0, 65535] are refused (their scale is unknown)
    F                           float intensities in [0, 1]: round(v * 255); values outside [0, 1] or
                                non-finite ones are refused
    LA, La, RGBA, RGBa, PA, P with transparency
                                composited onto black: round(c * a / 255) per channel

so a 16-bit image is never clipped to all-255, a transparent pixel never shows the colour hidden under it,
and any other mode (LAB, HSV, multi-band TIFF) is a :class:`DataError` naming the file. An image of more
than ``PIL.Image.MAX_IMAGE_PIXELS`` pixels is refused before its pixels are decoded (a decompression bomb).
"""
from __future__ import annotations

import os
import stat
import warnings
from pathlib import Path

import numpy as np

from ._common import DataError

__all__ = ["load_image", "to_rgb8", "check_regular_file"]

_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")
_ALPHA = ("LA", "La", "RGBA", "RGBa", "PA")
_PILLOW_RGB = ("1", "L", "RGB", "CMYK", "YCbCr", "P")
_KINDS = {stat.S_ISFIFO: "a named pipe", stat.S_ISSOCK: "a socket", stat.S_ISCHR: "a character device",
          stat.S_ISBLK: "a block device", stat.S_ISDIR: "a directory"}


def check_regular_file(path: str | Path) -> int:
    """Size in bytes of ``path`` if it is a regular file (symlinks followed); else :class:`DataError` naming it.

    Opening a named pipe would block and a device can be endless, so they are refused before any read.
    """
    try:
        st = os.stat(path)
    except OSError as e:
        raise DataError(f"{path}: cannot stat the file ({e.strerror or e}); replace or delete it") from None
    if not stat.S_ISREG(st.st_mode):
        kind = next((k for test, k in _KINDS.items() if test(st.st_mode)), "not a regular file")
        raise DataError(f"{path}: {kind}, not a regular file; remove it from the dataset folder")
    return st.st_size


def _gray16_to_rgb8(a: np.ndarray, path) -> np.ndarray:
    if a.size and (a.min() < 0 or a.max() > 65535):
        raise DataError(f"{path}: 32-bit integer image with values in [{a.min()}, {a.max()}], outside the "
                        f"16-bit range [0, 65535]; convert it to an 8-bit or 16-bit image")
    g = ((a.astype(np.int64) * 255 + 32767) // 65535).astype(np.uint8)   # round(v * 255 / 65535)
    return np.repeat(g[..., None], 3, axis=-1)


def _float_to_rgb8(a: np.ndarray, path) -> np.ndarray:
    if a.size and not (np.isfinite(a).all() and a.min() >= 0.0 and a.max() <= 1.0):
        raise DataError(f"{path}: floating-point image with values in [{np.nanmin(a)}, {np.nanmax(a)}]; "
                        f"expected intensities in [0, 1]; convert it to an 8-bit image")
    g = np.rint(a.astype(np.float64) * 255.0).astype(np.uint8)
    return np.repeat(g[..., None], 3, axis=-1)


def _composite_on_black(img) -> np.ndarray:
    rgba = np.asarray(img.convert("RGBA"), dtype=np.uint32)       # (H, W, 4); La / RGBa are un-premultiplied
    rgb, alpha = rgba[..., :3], rgba[..., 3:]
    return ((rgb * alpha + 127) // 255).astype(np.uint8)          # round(c * a / 255)


def to_rgb8(img, path) -> "Image.Image":  # noqa: F821
    """``img`` (any Pillow mode) -> an 8-bit RGB image by the module's rules; unknown modes -> DataError."""
    from PIL import Image

    mode = img.mode
    if mode in _SIXTEEN_BIT or mode == "I":
        return Image.fromarray(_gray16_to_rgb8(np.asarray(img), path), "RGB")
    if mode == "F":
        return Image.fromarray(_float_to_rgb8(np.asarray(img), path), "RGB")
    if mode in _ALPHA or (mode == "P" and "transparency" in img.info):
        return Image.fromarray(_composite_on_black(img), "RGB")
    if mode in _PILLOW_RGB:
        return img.convert("RGB")
    raise DataError(f"{path}: image mode {mode!r} is not supported (expected 1, L, P, RGB, RGBA, LA, CMYK, "
                    f"YCbCr, I;16, I or F); convert it to 8-bit RGB or grayscale")


def load_image(path: str):
    """Decode ``path`` fully (so truncation shows here) to 8-bit RGB; a bad file -> :class:`DataError` naming it."""
    from PIL import Image

    nbytes = check_regular_file(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with open(path, "rb") as f:
                img = Image.open(f)
                img.load()
                return to_rgb8(img, path)
    except DataError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise DataError(f"{path}: refused as a decompression bomb ({e}); the image is larger than "
                        f"PIL.Image.MAX_IMAGE_PIXELS = {Image.MAX_IMAGE_PIXELS} pixels") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:  # PIL reports bad files as OSError
        raise DataError(f"{path}: cannot decode the image ({nbytes} bytes; {type(e).__name__}: {e}); the file is "
                        f"empty, truncated or not an image, replace or delete it") from None
