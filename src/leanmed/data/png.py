"""Grey PNGs as the pipeline writes them: atomically, optionally recording the fingerprint of what made them.

A converted mammogram (leanmed.data.convert) and an LIDC patch (leanmed.data.lidc) each carry their fingerprint in a
tEXt chunk (`PNG_FINGERPRINT_KEY`); a PNG whose recorded fingerprint is the current one is kept, any other is redone.
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from leanmed.atomic import atomic_path

__all__ = ["PNG_FINGERPRINT_KEY", "write_png", "png_fingerprint", "is_current_png"]

PNG_FINGERPRINT_KEY = "leanmed-fingerprint"  # PNG tEXt keyword holding the image's fingerprint
_MODES = {np.dtype(np.uint8): "L", np.dtype(np.uint16): "I;16"}


def write_png(image: np.ndarray, path: str | os.PathLike, fingerprint: str | None = None) -> None:
    """Write a 2-D uint8 (mode L) or uint16 (mode I;16) array as a grey PNG, atomically, recording `fingerprint` in a
    tEXt chunk when given.

    The PNG goes to a temporary file in the same directory first and is renamed over `path`
    (`leanmed.atomic.atomic_path`), so a crash never leaves a partial PNG under the final name.
    """
    if image.ndim != 2 or image.dtype not in _MODES:
        raise ValueError(f"write_png needs a 2-D uint8 or uint16 array, got {image.dtype} {image.shape}")
    info = PngInfo()
    if fingerprint is not None:
        info.add_text(PNG_FINGERPRINT_KEY, fingerprint)
    with atomic_path(path) as temporary:
        Image.fromarray(np.ascontiguousarray(image)).save(temporary, format="PNG", pnginfo=info)


def png_fingerprint(path: str | os.PathLike) -> str | None:
    """The fingerprint recorded in a PNG (tEXt chunk `PNG_FINGERPRINT_KEY`), None when absent or unreadable."""
    try:
        with Image.open(path) as png:
            value = png.info.get(PNG_FINGERPRINT_KEY)
    except (OSError, SyntaxError, ValueError):
        return None
    return value if isinstance(value, str) else None


def is_current_png(path: str | os.PathLike, size: int, mode: str, fingerprint: str | None = None) -> bool:
    """True when `path` is a complete PNG of `size` x `size` pixels in `mode` ("L": 8-bit grey, "I;16": 16-bit) and,
    when `fingerprint` is given, records exactly that fingerprint (every chunk read and its CRC checked)."""
    try:
        with Image.open(path) as png:
            if png.format != "PNG" or png.size != (size, size) or png.mode != mode:
                return False
            if fingerprint is not None and png.info.get(PNG_FINGERPRINT_KEY) != fingerprint:
                return False
            png.verify()  # reads every chunk and checks its CRC
        return True
    except (OSError, SyntaxError, ValueError):
        return False
