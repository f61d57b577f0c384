"""Finding the breast (the largest bright connected component, in display values or in stored values through a
lookup table: `find_breast`, `coarse_breast`) and fitting the image around it: crop, pad to a square,
area-averaging resize, output bit depth.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np
from PIL import Image
from scipy import ndimage

from leanmed.data.dicom_display import lut_indices

# --------------------------------------------------------------------------------------------------------------
# Breast detection, crop, flip, pad, resize
# --------------------------------------------------------------------------------------------------------------


class Crop(NamedTuple):
    """`image` cropped to `box` = (top, bottom, left, right), bottom/right exclusive, in input pixels; `found` is
    False for blank images (no foreground), which are returned unchanged with the full-image box."""

    image: np.ndarray
    box: tuple[int, int, int, int]
    found: bool


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold (maximum between-class variance) of `values`, in their units."""
    values = np.asarray(values, dtype=np.float64).ravel()
    low, high = float(values.min()), float(values.max())
    if high <= low:
        return low
    counts, edges = np.histogram(values, bins=bins, range=(low, high))
    centers = (edges[:-1] + edges[1:]) / 2
    weight_below = np.cumsum(counts)
    weight_above = weight_below[-1] - weight_below
    sum_below = np.cumsum(counts * centers)
    mean_below = sum_below / np.maximum(weight_below, 1)
    mean_above = (sum_below[-1] - sum_below) / np.maximum(weight_above, 1)
    between = weight_below * weight_above * (mean_below - mean_above) ** 2
    return float(edges[int(np.argmax(between[:-1])) + 1])


def _subsample_step(shape: tuple[int, ...], max_side: int) -> int:
    return max(1, math.ceil(max(shape[:2]) / max_side))


class CoarseBreast(NamedTuple):
    """The breast found on a coarse image (a strided subsample or a reduced-resolution decode).

    `box` = (top, bottom, left, right) in coarse pixels, bottom/right exclusive; `threshold` is the display value
    above which a pixel counts as tissue, to be used again at full resolution.
    """

    box: tuple[int, int, int, int]
    found: bool
    on_right: bool
    threshold: float


def coarse_breast(
    sub: np.ndarray,
    lut: np.ndarray | None = None,
    edge_fraction: float = 0.1,
    min_area_fraction: float = 0.005,
    min_contrast: float = 0.02,
) -> CoarseBreast:
    """Largest bright connected component of a small image (stored values, mapped through `lut` when given).

    Otsu's threshold only splits background from tissue (any value in the empty gap between them splits alike,
    so it is not itself a good edge); the edge threshold sits `edge_fraction` of the way from the background's
    median to the tissue's median: low enough to keep the dim skin line, and far above background noise.
    found is False (full-image box) when the image is blank: tissue and background medians closer than
    `min_contrast` of the full scale (the dtype's maximum for integers, 1 for floats), or no component over
    `min_area_fraction` of the image.
    """
    full_box = (0, sub.shape[0], 0, sub.shape[1])
    display_dtype = lut.dtype if lut is not None else sub.dtype
    values = (np.take(lut, lut_indices(sub)) if lut is not None else sub).astype(np.float32)
    if float(values.max()) <= float(values.min()):
        return CoarseBreast(full_box, False, False, float(values.max()))
    otsu = otsu_threshold(values)
    background = float(np.median(values[values <= otsu]))
    tissue = float(np.median(values[values > otsu])) if (values > otsu).any() else otsu
    threshold = background + edge_fraction * (tissue - background)
    full_scale = float(np.iinfo(display_dtype).max) if np.issubdtype(display_dtype, np.integer) else 1.0
    if tissue - background < min_contrast * full_scale:
        return CoarseBreast(full_box, False, False, threshold)
    labels, count = ndimage.label(values > threshold)
    if count == 0:
        return CoarseBreast(full_box, False, False, threshold)
    areas = np.bincount(labels.ravel())[1:]
    largest = int(np.argmax(areas)) + 1
    if areas[largest - 1] < min_area_fraction * values.size:
        return CoarseBreast(full_box, False, False, threshold)
    rows = np.flatnonzero((labels == largest).any(axis=1))
    columns = np.flatnonzero((labels == largest).any(axis=0))
    half = values.shape[1] // 2
    on_right = float(values[:, values.shape[1] - half :].mean()) > float(values[:, :half].mean())
    box = (int(rows[0]), int(rows[-1]) + 1, int(columns[0]), int(columns[-1]) + 1)
    return CoarseBreast(box, True, on_right, threshold)


def find_breast(
    image: np.ndarray, lut: np.ndarray | None = None, max_side: int = 512, **coarse_options: float
) -> tuple[tuple[int, int, int, int], bool, bool]:
    """Bounding box of the breast: the largest bright connected component.

    Works on `lut[image]` when `lut` is given (stored values -> display values, applied only to the pixels
    looked at). Found on a copy subsampled to at most `max_side` pixels per side (`coarse_breast`), then each
    edge is refined at full resolution inside the one-step band where it must lie. `coarse_options`
    (edge_fraction, min_area_fraction, min_contrast) go to `coarse_breast`.
    Returns (box, found, breast_on_right); box = (top, bottom, left, right), bottom/right exclusive; found is
    False (full-image box) when the image is blank (see `coarse_breast`).
    """
    height, width = image.shape[:2]
    full_box = (0, height, 0, width)
    step = _subsample_step(image.shape, max_side)
    coarse = coarse_breast(image[::step, ::step], lut, **coarse_options)
    if not coarse.found:
        return full_box, False, False
    threshold, breast_on_right = coarse.threshold, coarse.on_right
    sub_top, sub_bottom, sub_left, sub_right = coarse.box
    sub_bottom, sub_right = sub_bottom - 1, sub_right - 1  # inclusive below
    if step == 1:
        return coarse.box, True, breast_on_right

    def bright(region: np.ndarray) -> np.ndarray:
        values = np.take(lut, lut_indices(region)) if lut is not None else region
        return values > threshold

    # Full-resolution edge search. A sub-sampled row r0*step is bright and row (r0-1)*step is not at the sampled
    # columns, so the edge lies between them, row (r0-1)*step included (it may be bright between the samples);
    # restrict columns to the component's span (plus one step) so that other bright objects (labels, markers)
    # outside it are ignored.
    col_lo, col_hi = (max(0, (sub_left - 1) * step), min(width, (sub_right + 1) * step + 1))
    row_lo, row_hi = (max(0, (sub_top - 1) * step), min(height, (sub_bottom + 1) * step + 1))

    band = slice(max(0, (sub_top - 1) * step), sub_top * step + 1)
    hits = np.flatnonzero(bright(image[band, col_lo:col_hi]).any(axis=1))
    top = band.start + int(hits[0]) if hits.size else sub_top * step

    band = slice(sub_bottom * step, min(height, (sub_bottom + 1) * step + 1))
    hits = np.flatnonzero(bright(image[band, col_lo:col_hi]).any(axis=1))
    bottom = band.start + int(hits[-1]) + 1 if hits.size else sub_bottom * step + 1

    band = slice(max(0, (sub_left - 1) * step), sub_left * step + 1)
    hits = np.flatnonzero(bright(image[row_lo:row_hi, band]).any(axis=0))
    left = band.start + int(hits[0]) if hits.size else sub_left * step

    band = slice(sub_right * step, min(width, (sub_right + 1) * step + 1))
    hits = np.flatnonzero(bright(image[row_lo:row_hi, band]).any(axis=0))
    right = band.start + int(hits[-1]) + 1 if hits.size else sub_right * step + 1
    return (top, bottom, left, right), True, breast_on_right


def crop_to_breast(image: np.ndarray, **options: Any) -> Crop:
    """Crop a display image (tissue bright) to the bounding box of its largest bright connected component.

    Blank images come back unchanged with found=False. Options are those of `find_breast`.
    """
    box, found, _ = find_breast(image, **options)
    top, bottom, left, right = box
    return Crop(image[top:bottom, left:right], box, found)


def pad_to_square(image: np.ndarray, fill: float = 0, anchor: str = "left") -> np.ndarray:
    """Pad a 2-D image to a square with `fill` (background), never stretching it.

    `anchor` says where a narrow image sits horizontally: "left" (chest wall on the left edge, padding on the
    right), "right" or "center"; a wide image is always centred vertically.
    """
    height, width = image.shape[:2]
    side = max(height, width)
    square = np.full((side, side) + image.shape[2:], fill, dtype=image.dtype)
    if anchor == "left":
        left = 0
    elif anchor == "right":
        left = side - width
    elif anchor == "center":
        left = (side - width) // 2
    else:
        raise ValueError(f"anchor must be 'left', 'right' or 'center', not {anchor!r}")
    top = (side - height) // 2
    square[top : top + height, left : left + width] = image
    return square


def area_resize(
    image: np.ndarray, size: tuple[int, int], box: tuple[float, float, float, float] | None = None
) -> np.ndarray:
    """Area-averaging (box filter) resize of a 2-D uint8/uint16/float32 image to size = (height, width).

    `box` = (left, top, right, bottom) in input pixel edges (fractions allowed) selects the region to resize;
    the whole image when None.
    """
    height, width = size
    if image.dtype not in (np.uint8, np.uint16):
        image = image.astype(np.float32)
    resized = Image.fromarray(np.ascontiguousarray(image)).resize((width, height), Image.BOX, box=box)
    return np.asarray(resized, dtype=image.dtype)


def reduced_crop(
    box: tuple[int, int, int, int], reduce: int, reduced_shape: tuple[int, int], full_shape: tuple[int, int]
):
    """Map a breast box found on a JPEG 2000 image decoded at 1/2^reduce to full resolution, and back to the
    fractional region of the reduced image that covers exactly that full-resolution box.

    JPEG 2000's low-pass samples sit on the even full-resolution samples, so reduced pixel k is centred on
    full-resolution pixel 2^reduce * k, not on the middle of a 2^reduce block: reduced coordinate
    u = (x - 0.5) / 2^reduce + 0.5 for a full-resolution coordinate x (pixel edges). Without this half-block
    shift the reduced output is offset by (2^reduce - 1) / 2 full-resolution pixels, which doubles its difference
    from the exact path. A full-resolution edge lies between the last reduced sample under the threshold and the
    first over it: the midpoint is taken (boxes touching the image border stay on it).
    Returns (full_box, region): full_box = (top, bottom, left, right) in full-resolution pixels, region =
    (left, top, right, bottom) in reduced pixel edges for `area_resize`.
    """
    scale = 2**reduce
    top, bottom, left, right = box
    rows, columns = full_shape
    half = scale // 2
    full_box = (
        max(top * scale - half, 0),
        rows if bottom >= reduced_shape[0] else min((bottom - 1) * scale + half + 1, rows),
        max(left * scale - half, 0),
        columns if right >= reduced_shape[1] else min((right - 1) * scale + half + 1, columns),
    )

    def to_reduced(edge: int, limit: int) -> float:
        return min(max((edge - 0.5) / scale + 0.5, 0.0), float(limit))

    region = (
        to_reduced(full_box[2], reduced_shape[1]),
        to_reduced(full_box[0], reduced_shape[0]),
        to_reduced(full_box[3], reduced_shape[1]),
        to_reduced(full_box[1], reduced_shape[0]),
    )
    return full_box, region


def fitted_size(height: int, width: int, image_size: int) -> tuple[int, int]:
    """(height, width) of an image scaled so that its longer side is `image_size`, aspect kept (at least 1 px)."""
    side = max(height, width)
    return max(1, round(height * image_size / side)), max(1, round(width * image_size / side))


def to_output_bits(image: np.ndarray, bits: int) -> np.ndarray:
    """Convert a 0..65535 uint16 image to the output depth: uint8 (bits=8, rounded) or uint16 (bits=16)."""
    if bits == 16:
        return image.astype(np.uint16, copy=False)
    if bits == 8:
        return np.rint(image.astype(np.float32) / 257.0).astype(np.uint8)
    raise ValueError(f"bits must be 8 or 16, not {bits}")
