"""Random fields and counts shared by the generators: band-limited noise, distinct ids, exact category counts."""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter


def linear_upsampling_matrix(n_out: int, n_in: int) -> np.ndarray:
    """Matrix (n_out x n_in) that linearly interpolates n_in samples spread over the full span onto n_out samples."""
    positions = np.linspace(0.0, n_in - 1.0, n_out)
    lower = np.clip(np.floor(positions).astype(np.int64), 0, max(n_in - 2, 0))
    upper_weight = positions - lower
    matrix = np.zeros((n_out, n_in), dtype=np.float32)
    rows = np.arange(n_out)
    if n_in == 1:
        matrix[:, 0] = 1.0
        return matrix
    matrix[rows, lower] = 1.0 - upper_weight
    matrix[rows, lower + 1] += upper_weight
    return matrix


def smooth_noise(rng: np.random.Generator, shape: tuple[int, int], grid_shape: tuple[int, int]) -> np.ndarray:
    """Band-limited noise of unit standard deviation (float32), features about shape/grid_shape pixels across.

    Smooths white noise on a small grid and upsamples it with two matrix products, which costs far less than filtering
    a full-size mammogram (3328 x 2560) directly.
    """
    grid = gaussian_filter(rng.standard_normal(grid_shape), sigma=1.0, mode="wrap")
    grid = (grid - grid.mean()) / (grid.std() + 1e-12)
    rows_up = linear_upsampling_matrix(shape[0], grid_shape[0])
    cols_up = linear_upsampling_matrix(shape[1], grid_shape[1])
    return (rows_up @ grid.astype(np.float32)) @ cols_up.T


def unique_integers(rng: np.random.Generator, count: int, low: int, high: int) -> np.ndarray:
    """``count`` distinct integers drawn uniformly from [low, high), sorted ascending."""
    if high - low < count:
        raise ValueError(f"cannot draw {count} distinct integers from [{low}, {high})")
    chosen: set[int] = set()
    while len(chosen) < count:
        chosen.update(int(v) for v in rng.integers(low, high, size=count - len(chosen)))
    return np.array(sorted(chosen), dtype=np.int64)


def exact_counts(total: int, fractions: dict, ensure_each: bool) -> dict:
    """Split ``total`` items over categories in proportion to ``fractions`` (largest remainder).

    With ``ensure_each`` and ``total >= len(fractions)``, every category gets at least one item, taken from the
    largest one, so that small datasets still show every category.
    """
    keys = list(fractions)
    weights = np.array([fractions[k] for k in keys], dtype=float)
    ideal = weights / weights.sum() * total
    counts = np.floor(ideal).astype(int)
    for index in np.argsort(-(ideal - counts), kind="stable")[: total - counts.sum()]:
        counts[index] += 1
    if ensure_each and total >= len(keys):
        for index in range(len(keys)):
            if counts[index] == 0:
                counts[int(np.argmax(counts))] -= 1
                counts[index] = 1
    return {k: int(c) for k, c in zip(keys, counts)}

