"""Stored pixel values -> display values: one lookup table that folds the modality rescale (or Modality LUT),
the VOI transform (VOI LUT, window or the stored range) and MONOCHROME1 inversion, so that tissue is bright.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pydicom

from leanmed.data.dicom_decode import DecodedImage

LUT_MAX = 65535  # the lookup table maps stored values to 0..LUT_MAX (uint16) before the output bit depth is chosen


# --------------------------------------------------------------------------------------------------------------
# Lookup table: rescale, VOI, MONOCHROME1 inversion
# --------------------------------------------------------------------------------------------------------------


def _first_number(value: Any) -> float:
    """First value of a possibly multi-valued numeric element (the first window when several are given)."""
    if isinstance(value, (list, tuple, pydicom.multival.MultiValue)):
        value = value[0]
    return float(value)


def _lut_table(item: pydicom.Dataset, signed_input: bool) -> tuple[np.ndarray, int, int]:
    """Entries, first input value and bit depth of a LUT item (Modality or VOI LUT Sequence item)."""
    descriptor = [int(v) for v in item.LUTDescriptor]
    entries = descriptor[0] or 65536  # 0 means 2^16 entries (PS3.3 C.11.1.1)
    first_mapped = descriptor[1]
    if signed_input and first_mapped >= 32768:  # descriptor stored as US although the input is signed
        first_mapped -= 65536
    bits = descriptor[2]
    data = item.LUTData
    if isinstance(data, (bytes, bytearray)):
        table = np.frombuffer(data, dtype="<u2")
    else:
        table = np.asarray(data if isinstance(data, (list, tuple, pydicom.multival.MultiValue)) else [data])
    table = np.asarray(table[:entries], dtype=np.float64)
    return table, first_mapped, bits


def _apply_lut_table(values: np.ndarray, table: np.ndarray, first_mapped: int) -> np.ndarray:
    index = np.clip(np.rint(values).astype(np.int64) - first_mapped, 0, len(table) - 1)
    return table[index]


def window_transform(x: np.ndarray, center: float, width: float, function: str = "LINEAR") -> np.ndarray:
    """Map modality values `x` through a VOI window to [0, 1] (DICOM PS3.3 C.11.2.1.2 and C.11.2.1.3).

    LINEAR (the default): 0 at or below c - 0.5 - (w-1)/2, 1 above c - 0.5 + (w-1)/2,
    ((x - (c - 0.5)) / (w - 1) + 0.5) between (w >= 1).
    LINEAR_EXACT: 0 at or below c - w/2, 1 above c + w/2, (x - c)/w + 0.5 between (w > 0).
    SIGMOID: 1 / (1 + exp(-4 (x - c) / w)) (w > 0).
    """
    x = np.asarray(x, dtype=np.float64)
    function = (function or "LINEAR").upper()
    if function == "SIGMOID":
        return 1.0 / (1.0 + np.exp(-4.0 * (x - center) / width))
    if function == "LINEAR_EXACT":
        low, high = center - width / 2, center + width / 2
        y = (x - center) / width + 0.5
    else:
        low, high = center - 0.5 - (width - 1) / 2, center - 0.5 + (width - 1) / 2
        y = (x - (center - 0.5)) / (width - 1) + 0.5 if width > 1 else np.zeros_like(x)
    return np.where(x <= low, 0.0, np.where(x > high, 1.0, y))


def build_lut(
    ds: pydicom.Dataset, stored_min: int | None = None, stored_max: int | None = None, dtype: Any = np.uint16
) -> tuple[np.ndarray, dict]:
    """One lookup table from stored pixel value to display value, and a description of the VOI used.

    The table has 2^BitsAllocated entries indexed by the stored value's bit pattern (`pixels.view(uint16)` for
    signed data): each pattern is masked to Bits Stored and sign-extended when Pixel Representation is 1, so
    decoders that sign-extend and those that do not index the same entry. Folded in, in order:
    Modality LUT Sequence or Rescale Slope/Intercept; the VOI LUT Sequence (first item) if present, else the
    first Window Center/Width with VOI LUT Function LINEAR (default), LINEAR_EXACT or SIGMOID, else a linear ramp
    over [stored_min, stored_max] (the image's own range when given, else the Bits Stored range); inversion for
    MONOCHROME1 so that tissue (high attenuation) is always bright.
    Output: uint16 over 0..65535 (dtype=np.uint16) or float32 over 0..1 (dtype=np.float32).
    """
    bits_allocated = int(ds.BitsAllocated)
    bits_stored = int(ds.get("BitsStored", bits_allocated))
    signed = int(ds.get("PixelRepresentation", 0)) == 1
    patterns = np.arange(2**bits_allocated, dtype=np.int64)
    stored = patterns & ((1 << bits_stored) - 1)
    if signed:
        stored = np.where(stored >= 1 << (bits_stored - 1), stored - (1 << bits_stored), stored)
    description: dict[str, Any] = {}

    if "ModalityLUTSequence" in ds and len(ds.ModalityLUTSequence):
        table, first_mapped, _ = _lut_table(ds.ModalityLUTSequence[0], signed)
        modality = _apply_lut_table(stored, table, first_mapped)
        description["modality"] = "lut_sequence"
    else:
        slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
        intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
        modality = stored * slope + intercept
        description["modality"] = f"rescale slope={slope:g} intercept={intercept:g}"

    display = None
    if "VOILUTSequence" in ds and len(ds.VOILUTSequence):
        table, first_mapped, bits = _lut_table(ds.VOILUTSequence[0], signed)
        # Some writers declare fewer bits than the entries use; scale by what the entries need.
        top = max(2**bits - 1, 2 ** int(math.ceil(math.log2(table.max() + 1))) - 1 if table.max() > 0 else 1)
        display = _apply_lut_table(modality, table, first_mapped) / top
        description.update(voi="lut_sequence", lut_entries=len(table), lut_bits=bits)
    elif "WindowCenter" in ds and "WindowWidth" in ds and ds.WindowCenter is not None and ds.WindowWidth is not None:
        center = _first_number(ds.WindowCenter)
        width = _first_number(ds.WindowWidth)
        function = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").upper()
        valid = width > 0 if function in ("LINEAR_EXACT", "SIGMOID") else width >= 1  # PS3.3 C.11.2.1.2
        if valid:
            display = window_transform(modality, center, width, function)
            description.update(voi="window", center=center, width=width, function=function)
        else:
            description["voi_ignored"] = f"invalid window width {width:g} for {function}"
    if display is None:
        if stored_min is None or stored_max is None:
            low_stored = -(1 << (bits_stored - 1)) if signed else 0
            high_stored = (1 << (bits_stored - 1)) - 1 if signed else (1 << bits_stored) - 1
        else:
            low_stored, high_stored = int(stored_min), int(stored_max)
        ends = modality[[_pattern_index(low_stored, bits_allocated), _pattern_index(high_stored, bits_allocated)]]
        low, high = float(ends.min()), float(ends.max())
        display = np.clip((modality - low) / (high - low), 0.0, 1.0) if high > low else np.zeros_like(modality)
        description.update(voi="min_max", low=low, high=high)

    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    if photometric == "MONOCHROME1":
        display = 1.0 - display
    description["inverted"] = photometric == "MONOCHROME1"

    if np.dtype(dtype) == np.uint16:
        return np.rint(display * LUT_MAX).astype(np.uint16), description
    return display.astype(dtype), description


def _pattern_index(stored_value: int, bits_allocated: int) -> int:
    """Bit pattern (LUT index) of a stored value: two's complement within Bits Allocated."""
    return stored_value & ((1 << bits_allocated) - 1)


def voi_lut(
    ds: pydicom.Dataset, stored_min: int | None = None, stored_max: int | None = None, dtype: Any = np.uint16
) -> np.ndarray:
    """The lookup table of `build_lut` alone: `np.take(voi_lut(ds), pixels.view(unsigned))` is the display image.

    Output uint16 over 0..65535 (default) or float32 over 0..1.
    """
    return build_lut(ds, stored_min, stored_max, dtype)[0]


def lut_indices(pixels: np.ndarray) -> np.ndarray:
    """View stored values as the unsigned bit patterns that index the lookup table (no copy)."""
    if pixels.dtype.kind == "i":
        return pixels.view(pixels.dtype.str.replace("i", "u"))
    return pixels


def stored_range(ds: pydicom.Dataset, pixels: np.ndarray) -> tuple[int, int]:
    """(min, max) of the stored values as `build_lut` reads them: masked to Bits Stored, sign-extended when
    Pixel Representation is 1.

    Raw words can differ from those values: signed data whose high bits are not sign-extended (a 12-of-16 bit
    word 0x0FFF is -1, not 4095), or overlay/garbage bits above Bits Stored. The raw min/max are used when they
    already lie inside the Bits Stored range (then masking changes nothing); otherwise the bit patterns present
    are counted (one pass, a 2^BitsAllocated histogram, no image-sized copy) and mapped to stored values.
    """
    bits_allocated = int(ds.BitsAllocated)
    bits_stored = int(ds.get("BitsStored", bits_allocated))
    signed = int(ds.get("PixelRepresentation", 0)) == 1
    low_stored = -(1 << (bits_stored - 1)) if signed else 0
    high_stored = (1 << (bits_stored - 1)) - 1 if signed else (1 << bits_stored) - 1
    raw_min, raw_max = int(pixels.min()), int(pixels.max())
    if low_stored <= raw_min and raw_max <= high_stored:
        return raw_min, raw_max
    present = np.flatnonzero(np.bincount(lut_indices(pixels).ravel(), minlength=2**bits_allocated))
    stored = present & ((1 << bits_stored) - 1)
    if signed:
        stored = np.where(stored >= 1 << (bits_stored - 1), stored - (1 << bits_stored), stored)
    return int(stored.min()), int(stored.max())


def display_image(decoded: DecodedImage, dtype: Any = np.uint16) -> tuple[np.ndarray, dict]:
    """The whole decoded image through its lookup table (`build_lut`; without a VOI, over `stored_range`), before
    any crop or resize, as `preprocess` sees it; and the VOI description. uint16 0..65535 or float32 0..1."""
    lut, voi = build_lut(decoded.dataset, *stored_range(decoded.dataset, decoded.pixels), dtype=dtype)
    return np.take(lut, lut_indices(decoded.pixels)), voi
