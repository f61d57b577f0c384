"""A small learnable split.csv with its PNGs, for tests and benchmarks of the training job (not the demo study:
`leanmed.demo` writes whole datasets in the real formats).
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Mapping

import numpy as np
from PIL import Image

__all__ = ["write_split"]


def write_split(root: str | Path, counts: Mapping[str, int], size: int = 32, seed: int = 0,
                signal: float = 0.4) -> str:
    """Write `counts` (split -> images, e.g. {"train": 48, "val": 16, "test": 16}) grey 8-bit PNGs of size x size under
    root/png/ and their root/split.csv (one subject per image, labels alternating 0/1 within each split); return the
    split.csv path. Background noise N(0.3, 0.08); positives carry a central square brighter by `signal` (learnable).
    """
    root = Path(root)
    (root / "png").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    mask = np.zeros((size, size))
    mask[size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = 1
    rows = []
    for split, count in counts.items():
        for position in range(count):
            index, label = len(rows), position % 2
            pixels = np.clip(rng.normal(0.3, 0.08, (size, size)) + label * signal * mask, 0, 1)
            path = f"png/{index}.png"
            Image.fromarray((pixels * 255).round().astype(np.uint8)).save(root / path)
            rows.append({"image_id": f"img{index}", "subject_id": f"sub{index}", "label": label, "path": path,
                         "split": split})
    with open(root / "split.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return str(root / "split.csv")
