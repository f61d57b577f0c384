"""The pixels of one generated mammogram, with the label carried by a finding of controllable strength and scale.

Every image holds one finding of a drawn total brightness: a subject who shows one (most BI-RADS 0 subjects) has it as
a cluster of fine calcifications, any other subject as one smooth benign density with the same total. The label is
therefore carried at the scale of a calcification (``RsnaDifficulty.calcification_size``), which downsampling removes;
a coarse cue (denser breasts among those who show a finding: a brighter fibroglandular cone behind the nipple,
``density_shift``, against a per-subject spread of brightness) survives it. Label noise and
per-subject visibility decide how far above chance a model can get (see leanmed.demo.calibration).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from leanmed.demo.sampling import smooth_noise

#: Largest stored value of a 12-bit image.
MAX_12_BIT = 4095

#: Calcifications in one cluster (fewest, most), and the cluster radius as a fraction of the image height.
CLUSTER_SIZE = (6, 12)
CLUSTER_RADIUS = (0.06, 0.10)

#: Subjects' breast brightness varies by up to this fraction either way (exposure, density), label or not.
SUBJECT_BRIGHTNESS_SPREAD = 0.15


@dataclass(frozen=True)
class RsnaDifficulty:
    """How hard the generated RSNA labels are to predict: the demo config's ``demo.rsna`` knobs.

    calcification_contrast: peak brightness of one calcification, as a multiple of the breast's tissue level.
        Measured on the demo data (label_noise 0.03, 6 seeds of a probe loop like the job's): 1.0 put the demo's
        CNN at 0.94-0.96 balanced accuracy, above the 0.95 aimed for; 0.8 at 0.88-0.95 (mean 0.91).
    calcification_size: radius of one calcification as a fraction of the image height (a pixel of a 32-pixel training
        image is about 0.025 of it, since the breast fills about 80 % of the height).
    density_shift: extra brightness (a multiple of the tissue level) of the fibroglandular cone of subjects who show a
        finding, largest where the breast is thickest; against a label-free per-subject brightness spread of
        +-SUBJECT_BRIGHTNESS_SPREAD. The coarse cue that survives downsampling. Measured in the demo study (the split
        stratified by machine): at 0.15 the CNN keeps 0.77-0.78 balanced accuracy at S = 4 and the MLP, which learns
        this cue only, reaches 0.67-0.70.
    label_noise: share of subjects whose BI-RADS disagrees with what their images show (a recall for reasons not in
        the image, a missed finding): it caps balanced accuracy at about 1 - label_noise. Measured on the demo data:
        at 0.06 the CNN's validation loss rose as it grew confident on the mislabelled subjects, early stopping kept
        an epoch between 4 and 9, and seeds spread 0.82-0.93 (std 0.049 over 4 seeds); at 0.03, 0.91-0.96 (0.025).
    subject_variation: half-width of the spread of a subject's finding visibility around 1 (uniform).
    """

    calcification_contrast: float = 0.8
    calcification_size: float = 0.02
    density_shift: float = 0.15
    label_noise: float = 0.03
    subject_variation: float = 0.5

    def __post_init__(self):
        for name in ("calcification_contrast", "calcification_size", "density_shift", "subject_variation"):
            if getattr(self, name) < 0:
                raise ValueError(f"demo.rsna.{name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.label_noise < 0.5:
            raise ValueError(f"demo.rsna.label_noise must lie in [0, 0.5), got {self.label_noise}")
        if self.subject_variation >= 1.0:
            raise ValueError(f"demo.rsna.subject_variation must be < 1, got {self.subject_variation}")


@dataclass(frozen=True)
class SubjectAppearance:
    """What one subject's images look like: drawn once per subject, so that all their images agree."""

    shows_finding: bool
    visibility: float  # multiplies the calcification contrast
    gland_threshold: float  # lower: more glandular tissue
    brightness: float  # multiplies the breast's brightness (density)


def draw_subject_appearance(
    rng: np.random.Generator, followup_needed: bool, difficulty: RsnaDifficulty
) -> SubjectAppearance:
    """The appearance of a subject whose label is ``followup_needed``; label noise flips what the images show."""
    shows_finding = bool(followup_needed) != bool(rng.random() < difficulty.label_noise)
    spread = difficulty.subject_variation
    return SubjectAppearance(
        shows_finding=shows_finding,
        visibility=float(rng.uniform(1.0 - spread, 1.0 + spread)),
        gland_threshold=float(rng.uniform(-0.3, 0.4)),
        brightness=float(1.0 + rng.uniform(-SUBJECT_BRIGHTNESS_SPREAD, SUBJECT_BRIGHTNESS_SPREAD)),
    )


@dataclass(frozen=True)
class BreastLayout:
    """Where the breast of one image lies, in pixels, with the chest wall on the left edge (column 0)."""

    center_row: float
    depth: float  # horizontal semi-axis: chest wall to nipple
    half_height_above: float  # vertical semi-axis above center_row
    half_height_below: float  # vertical semi-axis below center_row


def breast_layout(rng: np.random.Generator, height: int, width: int, view: str) -> BreastLayout:
    if view == "MLO":  # taller, lower, with the axilla and pectoral muscle at the top
        center_row = height * rng.uniform(0.52, 0.60)
        above, below = height * rng.uniform(0.40, 0.48), height * rng.uniform(0.34, 0.40)
    else:
        center_row = height * rng.uniform(0.45, 0.55)
        above, below = height * rng.uniform(0.34, 0.42), height * rng.uniform(0.34, 0.42)
    return BreastLayout(
        center_row=center_row,
        depth=width * rng.uniform(0.55, 0.80),
        half_height_above=min(above, center_row - 0.02 * height),
        half_height_below=min(below, height * 0.98 - center_row),
    )


def _squared_distances(
    shape: tuple[int, int], center_row: float, center_col: float, first: tuple[int, int], end: tuple[int, int]
) -> tuple[tuple[slice, slice], np.ndarray] | None:
    """The box [first, end) (rows, columns; clipped to ``shape``) as slices, and each of its pixels' squared distance
    to the centre (float32); None when the box lies outside the image."""
    top, left = max(first[0], 0), max(first[1], 0)
    bottom, right = min(end[0], shape[0]), min(end[1], shape[1])
    if top >= bottom or left >= right:
        return None
    rows = (np.arange(top, bottom, dtype=np.float32) - center_row)[:, None]
    cols = (np.arange(left, right, dtype=np.float32) - center_col)[None, :]
    return (slice(top, bottom), slice(left, right)), rows**2 + cols**2


def add_spherical_blob(
    image: np.ndarray, center_row: float, center_col: float, radius: float, amplitude: float
) -> None:
    """Add, in place, the projection of a sphere: amplitude * sqrt(1 - (d/radius)^2), d in pixels from the centre."""
    box = _squared_distances(
        image.shape, center_row, center_col,
        (int(center_row - radius) - 1, int(center_col - radius) - 1),
        (int(center_row + radius) + 2, int(center_col + radius) + 2),
    )
    if box is None:
        return
    window, squared = box
    fraction = np.clip(1.0 - squared / np.float32(radius**2), 0.0, 1.0)
    image[window] += np.float32(amplitude) * np.sqrt(fraction)


def add_gaussian_blob(image: np.ndarray, center_row: float, center_col: float, sigma: float, total: float) -> None:
    """Add, in place, a Gaussian of standard deviation ``sigma`` pixels whose sum over the plane is ``total``."""
    reach = 4.0 * sigma
    box = _squared_distances(
        image.shape, center_row, center_col,
        (int(center_row - reach), int(center_col - reach)),
        (int(center_row + reach) + 2, int(center_col + reach) + 2),
    )
    if box is None:
        return
    window, squared = box
    peak = np.float32(total / (2.0 * np.pi * sigma**2))
    image[window] += peak * np.exp(-squared / np.float32(2.0 * sigma**2))


def mammogram_pixels(
    rng: np.random.Generator,
    height: int,
    width: int,
    laterality: str,
    view: str,
    birads: float,
    subject: SubjectAppearance,
    difficulty: RsnaDifficulty,
) -> tuple[np.ndarray, float]:
    """One mammogram in display orientation (tissue bright): uint16 values in [0, 4095], and its tissue level.

    The breast is a half ellipse on the chest-wall edge (left for laterality L, right for R) whose brightness follows
    the compressed thickness of a half ellipsoid (dark fatty rim, a faint skin line), with patchy fibroglandular tissue
    from multi-scale smooth noise and signal-dependent quantum noise; MLO views add the pectoral muscle in the upper
    chest-wall corner. The finding (module docstring) lies inside the breast; BI-RADS 2 images add a few tiny benign
    calcifications.

    The tissue level (stored units at full thickness, before the finding) sets the display window, so that the window
    does not depend on the label.
    """
    layout = breast_layout(rng, height, width, view)
    tissue_level = float(rng.uniform(1300.0, 1700.0))
    level = np.float32(tissue_level)
    zero, one = np.float32(0.0), np.float32(1.0)
    # In-place float32 arithmetic throughout: a full-size mammogram has 8.5 million pixels.

    row_offsets = np.arange(height, dtype=np.float32)[:, None] - np.float32(layout.center_row)
    half_heights = np.where(row_offsets < 0, layout.half_height_above, layout.half_height_below).astype(np.float32)
    cols = np.arange(width, dtype=np.float32)[None, :]
    # depth_left = 1 - (normalised elliptic radius)^2: 1 at the chest wall centre, 0 on the skin, negative outside.
    depth_left = (row_offsets / half_heights) ** 2 + (cols / np.float32(layout.depth)) ** 2
    np.subtract(one, depth_left, out=depth_left)
    inside = np.minimum(np.maximum(depth_left * np.float32(50.0), zero), one)  # soft edge a few pixels wide
    skin_line = np.square(depth_left * np.float32(1 / 0.015))
    np.exp(-skin_line, out=skin_line)
    skin_line *= inside
    thickness = np.sqrt(np.maximum(depth_left, zero))  # compressed thickness of a half ellipsoid, 0..1
    del depth_left

    texture = smooth_noise(rng, (height, width), (10, 8))
    texture *= np.float32(0.55)
    texture += np.float32(0.30) * smooth_noise(rng, (height, width), (36, 28))
    texture += np.float32(0.15) * smooth_noise(rng, (height, width), (110, 88))
    # Denser breasts have more of the noise field above the threshold: bright glandular islands in darker fat,
    # gathered behind the nipple where the breast is thick.
    gland_threshold = np.float32(subject.gland_threshold)
    image = np.maximum(texture - gland_threshold, zero)
    image *= thickness
    image *= np.float32(0.35)
    # Fat brightness rises with thickness, concave like thickness ** 0.8 but cheaper: t * (2 - t).
    image += np.float32(0.25) + np.float32(0.55) * thickness * (np.float32(2.0) - thickness)
    image += np.float32(0.12) * skin_line
    if subject.shows_finding:  # denser: a brighter fibroglandular cone behind the nipple, where the breast is thick
        image += np.float32(difficulty.density_shift) * thickness * thickness
    image *= inside
    image *= level * np.float32(subject.brightness)
    del skin_line, inside

    if view == "MLO":
        muscle_width, muscle_height = width * rng.uniform(0.18, 0.32), height * rng.uniform(0.30, 0.45)
        row_fraction = np.arange(height, dtype=np.float32)[:, None] / np.float32(muscle_height)
        col_fraction = cols / np.float32(muscle_width)
        # A slightly convex border, brightest at the corner; computed only in the corner's bounding box.
        box_rows, box_cols = min(height, int(muscle_height * 1.2) + 2), min(width, int(muscle_width * 1.2) + 2)
        row_fraction, col_fraction = row_fraction[:box_rows], col_fraction[:, :box_cols]
        muscle_depth = one - (col_fraction + row_fraction) + np.float32(0.15) * col_fraction * row_fraction
        muscle = (
            level
            * np.float32(rng.uniform(0.8, 0.95))
            * (
                np.float32(0.85)
                + np.float32(0.15) * np.minimum(np.maximum(muscle_depth, zero), one)
                + np.float32(0.05) * texture[:box_rows, :box_cols]
            )
            * np.minimum(np.maximum(muscle_depth * np.float32(1 / 0.03), zero), one)
        )
        np.maximum(image[:box_rows, :box_cols], muscle, out=image[:box_rows, :box_cols])
    del texture, thickness

    def point_inside_breast(max_radius_fraction: float) -> tuple[float, float]:
        radius_fraction = np.sqrt(rng.uniform(0.02, max_radius_fraction**2))
        angle = rng.uniform(-1.3, 1.3)
        half_height = layout.half_height_above if angle < 0 else layout.half_height_below
        return (
            layout.center_row + half_height * radius_fraction * np.sin(angle),
            layout.depth * radius_fraction * np.cos(angle),
        )

    # The finding: the same drawn amount of extra brightness, rendered as a cluster of fine calcifications when the
    # subject shows one, as one smooth benign density when not. The two differ only at the scale of a calcification,
    # so downsampling beyond it removes the difference.
    center_row, center_col = point_inside_breast(0.65)
    cluster_radius = height * rng.uniform(*CLUSTER_RADIUS)
    n_calcifications = int(rng.integers(CLUSTER_SIZE[0], CLUSTER_SIZE[1] + 1))
    calcification_radii = height * difficulty.calcification_size * rng.uniform(0.8, 1.2, n_calcifications)
    contrast = tissue_level * difficulty.calcification_contrast * subject.visibility
    amplitudes = contrast * rng.uniform(0.8, 1.2, n_calcifications)
    distances = cluster_radius * np.sqrt(rng.uniform(0.0, 1.0, n_calcifications))
    angles = rng.uniform(0.0, 2 * np.pi, n_calcifications)
    if subject.shows_finding:
        for distance, angle, radius, amplitude in zip(distances, angles, calcification_radii, amplitudes):
            add_spherical_blob(
                image, center_row + distance * np.sin(angle), center_col + distance * np.cos(angle), radius, amplitude
            )
    else:
        # A sphere's projection holds 2/3 pi r^2 amplitude; a Gaussian 2 pi sigma^2 peak: equal totals.
        total = float(np.sum(amplitudes * calcification_radii**2)) * (2.0 / 3.0) * np.pi
        add_gaussian_blob(image, center_row, center_col, sigma=cluster_radius / 2.0, total=total)
    if birads == 2:  # benign: a few isolated tiny calcifications, too small to survive the resize to training size
        for _ in range(int(rng.integers(2, 7))):
            dot_row, dot_col = point_inside_breast(0.8)
            add_spherical_blob(image, dot_row, dot_col, max(1.5, height * 0.003), tissue_level * 0.5)

    # Quantum noise grows with signal; the background keeps a small dark-current level.
    noise_std = image * np.float32(0.01)
    noise_std += np.float32(5.0)
    noise_std *= rng.standard_normal((height, width), dtype=np.float32)
    image += noise_std
    image += np.float32(12.0)
    del noise_std
    np.rint(image, out=image)
    np.minimum(np.maximum(image, zero, out=image), np.float32(MAX_12_BIT), out=image)
    pixels = image.astype(np.uint16)
    if laterality == "R":
        pixels = np.ascontiguousarray(pixels[:, ::-1])
    return pixels, tissue_level

