"""An LIDC-IDRI lookalike: the pickle of 128x128 lung CT patches with 4 rater masks of the Probabilistic U-Net.

A dict of float32 CT patches in [0, 1], each with the masks of 4 raters (empty for raters who did not mark a nodule);
a patch is a tumour when at least cohort.lidc.min_raters of them marked it.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from leanmed.atomic import atomic_path
from leanmed.demo.sampling import exact_counts, smooth_noise


#: Share of patches by the number of raters (of 4) who marked a nodule; every count appears once there are 5 patches.
LIDC_RATER_FRACTIONS = {0: 0.30, 1: 0.15, 2: 0.15, 3: 0.15, 4: 0.25}
#: Root of the LIDC-IDRI series UIDs.
LIDC_UID_ROOT = "1.3.6.1.4.1.14519.5.2.1.6279.6001."
#: Radius (px) and contrast ranges of a nodule by its number of raters: faint and small when one rater marked it,
#: clear when two or more did; a borderline nodule (see generate_lidc's ``borderline_fraction``) lies between the two.
NODULE_LOOK = {
    1: ((2.5, 4.0), (0.2, 0.3)),
    2: ((4.0, 7.0), (0.45, 0.6)),
    3: ((5.0, 12.0), (0.5, 0.7)),
    "borderline": ((3.0, 5.5), (0.28, 0.47)),
}


def _draw_vessel(
    image: np.ndarray, rng: np.random.Generator, lung: np.ndarray, through: tuple[float, float] | None = None
) -> None:
    """Add, in place, a gently curving vessel that tapers from 2.5 px to 0.8 px sigma, only where ``lung`` is 1.

    through: a point the vessel passes through (for nodule look-alikes); otherwise a random one.
    """
    size = image.shape[0]
    anchor = np.array(through if through is not None else rng.uniform(0, size, 2), dtype=np.float32)
    heading = rng.uniform(0, 2 * np.pi)
    turn_rate = rng.normal(0.0, 0.006)  # radians per pixel
    length = rng.uniform(50, 160)
    step = 1.5
    arc = np.arange(-length / 2, length / 2, step, dtype=np.float32)
    headings = heading + turn_rate * arc
    path = np.cumsum(np.stack([np.sin(headings), np.cos(headings)], axis=1) * step, axis=0)
    path += anchor - path[len(path) // 2]
    sigmas = np.linspace(rng.uniform(1.6, 2.5), rng.uniform(0.8, 1.2), len(path)).astype(np.float32)
    contrast = np.float32(rng.uniform(0.2, 0.35))
    grid_rows, grid_cols = np.mgrid[0:size, 0:size].astype(np.float32)
    squared = (grid_rows[..., None] - path[:, 0]) ** 2 + (grid_cols[..., None] - path[:, 1]) ** 2
    tube = np.exp(-squared / (2 * sigmas**2)).max(axis=-1)
    image += contrast * tube * lung


def _lidc_patch(
    rng: np.random.Generator, n_raters: int, size: int, lung_level: float, borderline: bool = False
) -> tuple[np.ndarray, list]:
    """One CT patch in [0, 1] (float32) and the 4 raters' masks (uint8 0/1).

    Lung parenchyma is dark with smooth texture; vessels are bright curved tubes; some patches show the chest wall.
    A nodule (n_raters >= 1) is a bright, slightly lobulated blob near the centre (the real crops are centred on the
    annotation): faint and small when one rater marked it, clear when two or more did (NODULE_LOOK), of the
    in-between borderline look when ``borderline``. Each marking rater's mask outlines the nodule at a slightly
    different extent; the other raters' masks are empty.
    """
    image = np.float32(lung_level) + np.float32(0.03) * smooth_noise(rng, (size, size), (10, 10))
    if rng.random() < 0.4:  # chest wall entering from one side, with a curved border
        side = int(rng.integers(4))
        coordinate = np.arange(size, dtype=np.float32)
        border = size * rng.uniform(0.05, 0.3) + size * 0.05 * np.sin(coordinate / size * np.pi * rng.uniform(0.5, 2))
        depth = coordinate[:, None] - border[None, :]  # positive beyond the border, per column
        wall = np.clip(-depth / 2.0 + 0.5, 0, 1)  # 1 inside the wall (first rows), soft 2 px edge
        wall = np.rot90(wall, side).astype(np.float32)
        image = image + np.float32(rng.uniform(0.35, 0.5)) * wall
        lung = 1.0 - wall
    else:
        lung = np.ones((size, size), dtype=np.float32)
    for _ in range(int(rng.integers(2, 6))):
        _draw_vessel(image, rng, lung)
    center = size / 2 + rng.uniform(-8, 8, 2)
    if n_raters == 0 and rng.random() < 0.6:  # a look-alike: a vessel crossing the centre
        _draw_vessel(image, rng, lung, through=(center[0], center[1]))

    masks = [np.zeros((size, size), dtype=np.uint8) for _ in range(4)]
    if n_raters >= 1:
        (radius_range, contrast_range) = NODULE_LOOK["borderline" if borderline else min(n_raters, 3)]
        radius, contrast = rng.uniform(*radius_range), rng.uniform(*contrast_range)
        grid_rows, grid_cols = np.mgrid[0:size, 0:size].astype(np.float32)
        offset_rows, offset_cols = grid_rows - np.float32(center[0]), grid_cols - np.float32(center[1])
        angle = np.arctan2(offset_rows, offset_cols)
        lobes = 1.0 + sum(
            rng.uniform(0.02, 0.08) * np.sin(k * angle + rng.uniform(0, 2 * np.pi)) for k in (2, 3, 5)
        )
        relative_distance = np.sqrt(offset_rows**2 + offset_cols**2) / (np.float32(radius) * lobes)
        image += np.float32(contrast) * np.clip((1.0 - relative_distance) / np.float32(0.35), 0.0, 1.0)
        for rater in rng.choice(4, size=n_raters, replace=False):
            extent = 1.0 + rng.uniform(-0.15, 0.15)
            masks[int(rater)] = (relative_distance < extent).astype(np.uint8)

    image += np.float32(0.015) * rng.standard_normal((size, size), dtype=np.float32)
    return np.clip(image, 0.0, 1.0).astype(np.float32), masks


def generate_lidc(
    out_path, n_patients=20, patches_per_patient=6, seed=0, patch_size=128, borderline_fraction=0.0
) -> dict:
    """Write an LIDC-IDRI lookalike pickle (Probabilistic U-Net layout) and return a summary.

    borderline_fraction: share of the nodules marked by one or by two raters that have the borderline look
        (NODULE_LOOK["borderline"], the same whichever of the two counts): the nodules real raters split on, whose
        label (tumour when >= 2 of 4 raters marked it) the image cannot tell. It caps balanced accuracy: at 1, about
        0.85 (half of the borderline patches misread); at 0 (the default) a clear nodule always means a tumour, and
        the random draws are those of earlier versions, so the same seed gives the same pickle.

    The pickle holds a dict ``"LIDC-IDRI-0001_slice_12_nodule_0" -> {"image": float32 (patch_size, patch_size) in
    [0, 1], "masks": list of 4 uint8 0/1 arrays, "series_uid": str}``; the patient id is the text before the first
    underscore.

    Returns:
        dict with ``path``, ``n_patients``, ``n_patches``, ``n_by_raters`` ({0..4: count}),
        ``n_at_least_2_raters``, ``n_at_least_3_raters`` and ``n_borderline`` (patches of the borderline look).
    """
    n_patients, patches_per_patient, patch_size = int(n_patients), int(patches_per_patient), int(patch_size)
    if n_patients < 1 or patches_per_patient < 1:
        raise ValueError("n_patients and patches_per_patient must be positive")
    if patch_size < 32:
        raise ValueError("patch_size must be at least 32 pixels")
    if not 0.0 <= borderline_fraction <= 1.0:
        raise ValueError(f"demo.lidc.borderline_fraction must lie in [0, 1], got {borderline_fraction}")
    rng = np.random.default_rng(seed)
    n_patches = n_patients * patches_per_patient
    counts = exact_counts(n_patches, LIDC_RATER_FRACTIONS, ensure_each=True)
    raters_per_patch = np.repeat(list(counts), list(counts.values()))[rng.permutation(n_patches)]

    patient_numbers = np.sort(rng.choice(np.arange(1, max(1012, n_patients) + 1), size=n_patients, replace=False))
    data = {}
    n_borderline = 0
    for patient_index, patient_number in enumerate(patient_numbers):
        patient_id = f"LIDC-IDRI-{patient_number:04d}"
        series_uid = LIDC_UID_ROOT + str(rng.integers(1, 10)) + "".join(str(d) for d in rng.integers(0, 10, 29))
        lung_level = rng.uniform(0.05, 0.15)
        slices = np.sort(rng.choice(np.arange(20, 300), size=patches_per_patient, replace=False))
        for nodule_index, slice_index in enumerate(slices):
            n_raters = int(raters_per_patch[patient_index * patches_per_patient + nodule_index])
            # Drawn only when the knob is on, so that borderline_fraction 0 keeps earlier versions' random stream.
            borderline = n_raters in (1, 2) and borderline_fraction > 0 and rng.random() < borderline_fraction
            if borderline:
                n_borderline += 1
            image, masks = _lidc_patch(rng, n_raters, patch_size, lung_level, borderline)
            key = f"{patient_id}_slice_{slice_index}_nodule_{nodule_index}"
            data[key] = {"image": image, "masks": masks, "series_uid": series_uid}

    out_path = Path(out_path)
    with atomic_path(out_path) as temporary, open(temporary, "wb") as handle:
        pickle.dump(data, handle, protocol=4)

    n_by_raters = {k: int((raters_per_patch == k).sum()) for k in range(5)}
    return {
        "path": str(out_path),
        "n_patients": n_patients,
        "n_patches": n_patches,
        "n_by_raters": n_by_raters,
        "n_at_least_2_raters": int((raters_per_patch >= 2).sum()),
        "n_at_least_3_raters": int((raters_per_patch >= 3).sum()),
        "n_borderline": n_borderline,
    }
