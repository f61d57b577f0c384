"""One mammogram DICOM -> one preprocessed grey image.

Pipeline (see `preprocess`): decode the stored pixel values, build one lookup table that folds the modality
rescale, the VOI transform and MONOCHROME1 inversion, find the breast on a subsampled copy, apply the table only
inside the breast's bounding box, area-average to the output size, flip the breast to the left, pad to a square
with background and write an 8- or 16-bit grey PNG.

The pieces: `leanmed.data.dicom_decode` (stored pixel values, and how its decoders were chosen),
`leanmed.data.dicom_display` (the lookup table) and `leanmed.data.breast` (the breast's box, crop, resize, pad).
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import NamedTuple

import imagecodecs
import numpy as np

from leanmed.data import openjpeg
from leanmed.data.breast import (
    area_resize,
    coarse_breast,
    find_breast,
    fitted_size,
    pad_to_square,
    reduced_crop,
    to_output_bits,
)
from leanmed.data.dicom_decode import DECODER_NAMES, DecodedImage, DicomError, read_dicom
from leanmed.data.dicom_display import build_lut, lut_indices, stored_range
from leanmed.data.png import write_png  # noqa: F401  (part of this module's interface: preprocess, then write_png)

# --------------------------------------------------------------------------------------------------------------
# The whole path
# --------------------------------------------------------------------------------------------------------------

PATH_MODES = ("exact", "reduced")


# Region decoding: the coarse decode keeps the longer side >= this many pixels (3328 rows -> 1/8, 416 px), enough
# to find the breast's component; its edges are then searched again at full resolution.
REGION_COARSE_SIDE = 400
# Full-resolution margin decoded around the coarse box, in coarse pixels: a JPEG 2000 low-pass sample blends its
# neighbours at every level, so a coarse edge can sit up to about two coarse pixels inside the true one.
REGION_MARGIN_COARSE_PIXELS = 3


class RegionBreast(NamedTuple):
    """The breast decoded at full resolution from a JPEG 2000 decode area.

    `breast` holds display values (the table applied) of exactly `box` = (top, bottom, left, right) in full-image
    pixels; `area` is the rectangle that was decoded (box plus margin).
    """

    breast: np.ndarray
    box: tuple[int, int, int, int]
    area: tuple[int, int, int, int]
    on_right: bool


def region_breast(decoded: DecodedImage, lut: np.ndarray) -> RegionBreast | None:
    """Find the breast on a coarse JPEG 2000 decode, decode only its box (plus margin) at full resolution.

    `decoded` is a reduced decode (decoded.reduce > 0) that kept its codestream; `lut` maps stored values to
    display values. The coarse image gives the component and the tissue threshold; at full resolution each edge
    is the first/last row/column of the decoded area holding a pixel above that threshold, as in `find_breast`.
    The pixels are OpenJPEG's own, bit-identical to a whole-image decode. Returns None (decode the whole image
    instead) when the image is blank or an edge reaches the decoded area's border inside the image (the breast
    may continue beyond it). Raises DicomError when OpenJPEG rejects the stream.
    """
    scale = 2**decoded.reduce
    rows, columns = decoded.full_shape
    coarse = coarse_breast(decoded.pixels, lut)
    if not coarse.found:
        return None
    top, bottom, left, right = coarse.box
    margin = REGION_MARGIN_COARSE_PIXELS * scale
    area = (
        max(top * scale - margin, 0),
        min((bottom - 1) * scale + 1 + margin, rows),
        max(left * scale - margin, 0),
        min((right - 1) * scale + 1 + margin, columns),
    )
    try:
        pixels = openjpeg.decode(decoded.codestream, area=area)
    except openjpeg.OpenJpegError as error:
        raise DicomError(decoded.path, f"cannot decode pixel data (OpenJPEG: {error})") from None
    expected = (area[1] - area[0], area[3] - area[2])
    if pixels.shape != expected:
        raise DicomError(decoded.path, f"decode area {area} gave shape {pixels.shape}, expected {expected}")
    display = np.take(lut, lut_indices(pixels))
    bright = display > coarse.threshold
    bright_rows = np.flatnonzero(bright.any(axis=1))
    bright_columns = np.flatnonzero(bright.any(axis=0))
    if bright_rows.size == 0:
        return None
    r0, r1 = int(bright_rows[0]), int(bright_rows[-1]) + 1
    c0, c1 = int(bright_columns[0]), int(bright_columns[-1]) + 1
    if (
        (r0 == 0 and area[0] > 0)
        or (r1 == expected[0] and area[1] < rows)
        or (c0 == 0 and area[2] > 0)
        or (c1 == expected[1] and area[3] < columns)
    ):
        return None
    box = (area[0] + r0, area[0] + r1, area[2] + c0, area[2] + c1)
    return RegionBreast(display[r0:r1, c0:c1], box, area, coarse.on_right)


def _decode_whole_j2k(decoded: DecodedImage) -> DecodedImage:
    """`decoded` (a reduced JPEG 2000 decode with its codestream) decoded again at full resolution."""
    try:
        pixels = imagecodecs.jpeg2k_decode(decoded.codestream, numthreads=1)
    except Exception as error:
        raise DicomError(decoded.path, f"cannot decode pixel data ({type(error).__name__}: {error})") from None
    if pixels.shape != decoded.full_shape:
        raise DicomError(decoded.path, f"decoded shape {pixels.shape} differs from the header's {decoded.full_shape}")
    return dataclasses.replace(decoded, pixels=pixels, reduce=0, decoder=DECODER_NAMES["jpeg2000"], codestream=None)


def preprocess(
    path: str | os.PathLike,
    image_size: int = 256,
    bits: int = 8,
    flip_to_left: bool = True,
    path_mode: str = "exact",
    oversample: float = 3.0,
    region_decoding: bool = True,
) -> tuple[np.ndarray, dict]:
    """Decode, window, crop, flip, resize and pad one mammogram to an image_size x image_size grey image.

    Returns (image, info): image is uint8 (bits=8) or uint16 (bits=16), tissue bright, breast on the left when
    flip_to_left; info records the decoder, the VOI used, the breast box in full-resolution pixels
    (top, bottom, left, right), whether it was found, whether the image was flipped, and timings in seconds.
    path_mode "exact" decodes at full resolution; "reduced" decodes JPEG 2000 at the coarsest wavelet level that
    keeps the longer side >= oversample x image_size (other syntaxes decode at full resolution either way).
    On JPEG 2000 the exact path decodes only the breast's box at full resolution (`region_breast`: same pixels,
    about half the decoding) unless `region_decoding` is False or no libopenjp2 is found; info["decode_area"]
    records the rectangle decoded (None: the whole image).
    Raises DicomError naming the file for anything that prevents an image.
    """
    if path_mode not in PATH_MODES:
        raise ValueError(f"path_mode must be one of {PATH_MODES}, not {path_mode!r}")
    if bits not in (8, 16):
        raise ValueError(f"bits must be 8 or 16, not {bits}")
    started = time.perf_counter()
    # Exact path on JPEG 2000: a coarse decode finds the breast, then only its box is decoded at full resolution
    # (`region_breast`); whole-image decoding when no libopenjp2 is found or the region cannot be trusted.
    region_decoding = region_decoding and path_mode == "exact" and openjpeg.available()
    min_side = None
    if path_mode == "reduced":
        min_side = oversample * image_size
    elif region_decoding:
        min_side = REGION_COARSE_SIDE
    decoded = read_dicom(path, keep_codestream=region_decoding, min_side=min_side)
    ds = decoded.dataset
    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    if photometric not in ("MONOCHROME1", "MONOCHROME2") or decoded.pixels.ndim != 2:
        raise DicomError(path, f"not a grey image (Photometric Interpretation {photometric or 'missing'})")
    if decoded.number_of_frames > 1:
        # Only the first frame is decoded: a tomosynthesis stack or a cine loop would silently become one image.
        raise DicomError(path, f"multi-frame image ({decoded.number_of_frames} frames); a mammogram has one frame")
    has_voi = "VOILUTSequence" in ds or ("WindowCenter" in ds and "WindowWidth" in ds)
    lut = voi = breast_region = None
    if has_voi:
        lut, voi = build_lut(ds)
        # Without a VOI the table depends on the whole image's range, which a region cannot give.
        if region_decoding and decoded.reduce > 0:
            breast_region = region_breast(decoded, lut)
    if region_decoding and decoded.reduce > 0 and breast_region is None:
        decoded = _decode_whole_j2k(decoded)
    pixels = decoded.pixels
    if lut is None:  # no VOI: the table spans the image's own stored-value range (`stored_range`)
        lut, voi = build_lut(ds, *stored_range(ds, pixels))

    if breast_region is not None:
        breast, full_box, on_right = breast_region.breast, breast_region.box, breast_region.on_right
        found = True
        resized = area_resize(breast, fitted_size(*breast.shape, image_size))
    else:
        box, found, on_right = find_breast(pixels, lut=lut)
        if decoded.reduce == 0:
            top, bottom, left, right = full_box = box
            # Exact: the table is applied only inside the breast box (background pixels are never looked up).
            breast = np.take(lut, lut_indices(pixels[top:bottom, left:right]))
            resized = area_resize(breast, fitted_size(bottom - top, right - left, image_size))
        else:
            full_box, region = reduced_crop(box, decoded.reduce, pixels.shape, decoded.full_shape)
            breast_height, breast_width = full_box[1] - full_box[0], full_box[3] - full_box[2]
            display = np.take(lut, lut_indices(pixels))  # small: the reduced image
            resized = area_resize(display, fitted_size(breast_height, breast_width, image_size), box=region)
    flipped = bool(flip_to_left and on_right)
    if flipped:
        resized = resized[:, ::-1]
    square = pad_to_square(resized, fill=0, anchor="left" if flip_to_left else "center")
    image = to_output_bits(square, bits)

    rows, columns = decoded.full_shape
    info = {
        "path": str(path),
        "transfer_syntax": decoded.transfer_syntax,
        "decoder": DECODER_NAMES["jpeg2000_region"] if breast_region is not None else decoded.decoder,
        "path_mode": path_mode,
        "reduce": 0 if breast_region is not None else decoded.reduce,
        "decode_area": tuple(int(edge) for edge in breast_region.area) if breast_region is not None else None,
        "decomposition_levels": decoded.decomposition_levels,
        "rows": rows,
        "columns": columns,
        "photometric": photometric,
        "voi": voi,
        "breast_box": tuple(int(edge) for edge in full_box),
        "breast_found": found,
        "flipped": flipped,
        "image_size": image_size,
        "bits": bits,
        "decode_seconds": decoded.decode_seconds,
        "total_seconds": time.perf_counter() - started,
    }
    return image, info
