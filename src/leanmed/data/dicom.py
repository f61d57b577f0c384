"""One mammogram DICOM -> one preprocessed grey image.

Pipeline (see `preprocess`): decode the stored pixel values, build one lookup table that folds the modality
rescale, the VOI transform and MONOCHROME1 inversion, find the breast on a subsampled copy, apply the table only
inside the breast's bounding box, area-average to the output size, flip the breast to the left, pad to a square
with background and write an 8- or 16-bit grey PNG.

Decoders were chosen by measurement on this project's machines (CPU seconds per image on one core, generated
3328 x 2560 12-bit mammograms; `benchmarks/dicom_to_png.py` repeats the comparison):

- JPEG 2000 (.90/.91): OpenJPEG 2.5 in all three bindings, equal within noise at full resolution
  (imagecodecs 0.83 s, pylibjpeg-openjpeg 0.82 s, Pillow 0.82 s); imagecodecs is used, with one thread. Only
  Pillow exposes OpenJPEG's `reduce` (decode at 1/2^r resolution without touching the finer wavelet levels):
  r=2 0.057 s, r=3 0.018 s; the "reduced" path uses it. None exposes OpenJPEG's decode area, so
  `leanmed.data.openjpeg` calls libopenjp2 through ctypes: the "exact" path finds the breast on a 1/8-resolution
  decode and decodes only its box at full resolution (pixels bit-identical to a whole decode; about 25% less CPU
  on generated mammograms whose breast covers about half the detector).
- JPEG Lossless (.57/.70): libjpeg-turbo through imagecodecs 0.076 s, against liblj92 (imagecodecs) 0.12 s and
  pylibjpeg-libjpeg 0.39 s.
- JPEG-LS (.80/.81): CharLS through imagecodecs 0.22 s, against pylibjpeg-libjpeg 0.91 s.
- RLE (.5): imagecodecs 0.013 s, against pydicom's own decoder 0.19 s.
"""

from __future__ import annotations

import dataclasses
import io
import math
import os
import struct
import time
import warnings
from dataclasses import dataclass
from typing import Any, NamedTuple

import imagecodecs
import numpy as np
import pydicom
from PIL import Image, ImageFile
from pydicom.encaps import generate_frames
from pydicom.errors import InvalidDicomError
from scipy import ndimage

from leanmed.data import openjpeg
from leanmed.data.png import write_png  # noqa: F401  (part of this module's interface: preprocess, then write_png)

IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1.99"
EXPLICIT_VR_BIG_ENDIAN = "1.2.840.10008.1.2.2"
JPEG_LOSSLESS_P14 = "1.2.840.10008.1.2.4.57"
JPEG_LOSSLESS_SV1 = "1.2.840.10008.1.2.4.70"
JPEG_LS_LOSSLESS = "1.2.840.10008.1.2.4.80"
JPEG_LS_NEAR_LOSSLESS = "1.2.840.10008.1.2.4.81"
JPEG_2000_LOSSLESS = "1.2.840.10008.1.2.4.90"
JPEG_2000 = "1.2.840.10008.1.2.4.91"
RLE_LOSSLESS = "1.2.840.10008.1.2.5"

NATIVE_SYNTAXES = frozenset(
    {IMPLICIT_VR_LITTLE_ENDIAN, EXPLICIT_VR_LITTLE_ENDIAN, DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN, EXPLICIT_VR_BIG_ENDIAN}
)
JPEG_2000_SYNTAXES = frozenset({JPEG_2000_LOSSLESS, JPEG_2000})
JPEG_LOSSLESS_SYNTAXES = frozenset({JPEG_LOSSLESS_P14, JPEG_LOSSLESS_SV1})
JPEG_LS_SYNTAXES = frozenset({JPEG_LS_LOSSLESS, JPEG_LS_NEAR_LOSSLESS})
SUPPORTED_SYNTAXES = NATIVE_SYNTAXES | JPEG_2000_SYNTAXES | JPEG_LOSSLESS_SYNTAXES | JPEG_LS_SYNTAXES | {RLE_LOSSLESS}

# The decoder used for each family; names are reported in `info["decoder"]` and by the benchmark.
DECODER_NAMES = {
    "native": "numpy (uncompressed)",
    "jpeg2000": "imagecodecs.jpeg2k_decode (OpenJPEG)",
    "jpeg2000_reduced": "Pillow JPEG 2000 with reduce (OpenJPEG)",
    "jpeg2000_region": "Pillow JPEG 2000 reduce (find the breast) + libopenjp2 decode area (its box, full resolution)",
    "jpeg_lossless": "imagecodecs.jpeg8_decode (libjpeg-turbo)",
    "jpeg_ls": "imagecodecs.jpegls_decode (CharLS)",
    "rle": "imagecodecs.dicomrle_decode",
}

# JPEG and JPEG-LS streams end with EOI (FF D9); DICOM pads fragments to even length and some writers add a
# trailing fill byte, so the marker must sit within the last few bytes. libjpeg-turbo decodes a truncated lossless
# stream without error (it fills the missing rows), which is why the end marker is checked.
_END_OF_IMAGE = b"\xff\xd9"
_END_MARKER_SLACK_BYTES = 8

LUT_MAX = 65535  # the lookup table maps stored values to 0..LUT_MAX (uint16) before the output bit depth is chosen


class DicomError(Exception):
    """A DICOM file that cannot be turned into an image; the message names the file and the reason."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


@dataclass
class DecodedImage:
    """Stored pixel values of the first frame of a DICOM file.

    `pixels` holds the stored values as the decoders give them (uint8/uint16, int8/int16 when signed), shape
    (rows, columns) or (rows, columns, samples), at 1/2^reduce of the full resolution. `dataset` is the header
    without its Pixel Data (dropped after decoding to bound memory).
    """

    path: str
    dataset: pydicom.Dataset
    pixels: np.ndarray
    transfer_syntax: str
    decoder: str
    reduce: int = 0
    decomposition_levels: int | None = None
    full_shape: tuple[int, int] = (0, 0)
    number_of_frames: int = 1
    decode_seconds: float = 0.0
    codestream: bytes | None = None  # the JPEG 2000 frame, kept on request for a later region decode


# --------------------------------------------------------------------------------------------------------------
# Decoding
# --------------------------------------------------------------------------------------------------------------


class J2KHeader(NamedTuple):
    """Fields of a JPEG 2000 codestream's main header (SIZ and COD marker segments)."""

    width: int
    height: int
    components: int
    precision: int  # bits per sample of component 0
    signed: bool
    decomposition_levels: int  # wavelet levels: the deepest `reduce` OpenJPEG accepts
    x_offset: int = 0  # image origin on the reference grid (XOsiz, YOsiz); 0 in DICOM in practice
    y_offset: int = 0

    def reduced_size(self, reduce: int) -> tuple[int, int]:
        """(width, height) OpenJPEG decodes at 1/2^reduce: ceil(end / 2^r) - ceil(origin / 2^r) (ISO 15444-1 B.5)."""
        scale = 2**reduce

        def ceil_div(value: int) -> int:
            return -(-value // scale)

        return (
            ceil_div(self.x_offset + self.width) - ceil_div(self.x_offset),
            ceil_div(self.y_offset + self.height) - ceil_div(self.y_offset),
        )


def parse_j2k_header(codestream: bytes) -> J2KHeader:
    """Read image size, precision and number of wavelet decomposition levels from a JPEG 2000 codestream.

    Accepts a bare codestream (starts with SOC FF4F) or one wrapped in a JP2 file. Raises ValueError when the
    SIZ or COD marker segment is missing.
    """
    start = codestream.find(b"\xff\x4f\xff\x51")  # SOC followed by SIZ opens every codestream
    if start < 0:
        raise ValueError("no JPEG 2000 codestream (SOC/SIZ markers) found")
    siz = start + 2
    (lsiz,) = struct.unpack_from(">H", codestream, siz + 2)
    xsiz, ysiz, xosiz, yosiz = struct.unpack_from(">IIII", codestream, siz + 6)
    (csiz,) = struct.unpack_from(">H", codestream, siz + 38)
    ssiz = codestream[siz + 40]
    position = siz + 2 + lsiz
    levels = None
    # Walk the main-header marker segments (each has a 2-byte length) until COD or the first tile part.
    while position + 4 <= len(codestream):
        marker, length = struct.unpack_from(">HH", codestream, position)
        if marker == 0xFF52:  # COD: Scod(1) SGcod(4) then SPcod whose first byte is the number of levels
            levels = codestream[position + 9]
            break
        if marker == 0xFF90 or (marker >> 8) != 0xFF:  # SOT: main header over
            break
        position += 2 + length
    if levels is None:
        raise ValueError("no COD marker segment in the JPEG 2000 main header")
    return J2KHeader(
        width=xsiz - xosiz,
        height=ysiz - yosiz,
        components=csiz,
        precision=(ssiz & 0x7F) + 1,
        signed=bool(ssiz & 0x80),
        decomposition_levels=levels,
        x_offset=xosiz,
        y_offset=yosiz,
    )


def _decode_j2k_reduced(codestream: bytes, header: J2KHeader, reduce: int) -> np.ndarray:
    """Decode a single-component JPEG 2000 codestream at 1/2^reduce resolution with Pillow's OpenJPEG binding.

    Pillow widens samples to its 8- or 16-bit modes: it adds 2^(precision-1) to signed samples and shifts left by
    (8 or 16) - precision. Both are undone here (cheap: the image is already small), so the result holds stored
    values exactly like the full-resolution decoders.
    """
    image = Image.open(io.BytesIO(codestream))
    # Pillow sizes its reduced canvas by rounding (size + 2^(r-1)) / 2^r down, OpenJPEG by ceil(size / 2^r); when
    # they differ (size mod 2^r in 1..2^(r-1)-1) Pillow fails with "broken data stream". So the tile is set to
    # OpenJPEG's size here, leaving Pillow's own `reduce` (which would resize again) at 0.
    width, height = header.reduced_size(reduce)
    tile = image.tile[0]
    codec, _, layers, descriptor, length = tile.args
    image._size = (width, height)
    image.tile = [
        ImageFile._Tile(
            tile.codec_name, (0, 0, width, height), tile.offset, (codec, reduce, layers, descriptor, length)
        )
    ]
    image.load()
    widened = np.asarray(image)
    container_bits = 8 if header.precision <= 8 else 16
    shift = container_bits - header.precision
    offset = (1 << (header.precision - 1)) if header.signed else 0
    values = (widened.astype(np.int32) >> shift) - offset
    if header.signed:
        return values.astype(np.int8 if container_bits == 8 else np.int16)
    return values.astype(np.uint8 if container_bits == 8 else np.uint16)


def _require_end_marker(frame: bytes) -> None:
    tail = frame[-(len(_END_OF_IMAGE) + _END_MARKER_SLACK_BYTES) :]
    if _END_OF_IMAGE not in tail:
        raise ValueError("truncated compressed stream: no end-of-image marker (FF D9) at its end")


def _native_frame(ds: pydicom.Dataset, transfer_syntax: str, rows: int, columns: int, samples: int) -> np.ndarray:
    bits_allocated = int(ds.BitsAllocated)
    signed = int(ds.get("PixelRepresentation", 0)) == 1
    byte_order = ">" if transfer_syntax == EXPLICIT_VR_BIG_ENDIAN else "<"
    dtype = np.dtype(f"{byte_order}{'i' if signed else 'u'}{bits_allocated // 8}")
    count = rows * columns * samples
    data = ds.PixelData
    if len(data) < count * dtype.itemsize:
        raise ValueError(f"truncated pixel data: {len(data)} bytes for {count * dtype.itemsize} expected")
    pixels = np.frombuffer(data, dtype=dtype, count=count)
    if dtype.byteorder == ">":
        pixels = pixels.astype(dtype.newbyteorder("="))
    if samples == 1:
        return pixels.reshape(rows, columns)
    if int(ds.get("PlanarConfiguration", 0)) == 1:
        return pixels.reshape(samples, rows, columns).transpose(1, 2, 0)
    return pixels.reshape(rows, columns, samples)


def _rle_frame(frame: bytes, ds: pydicom.Dataset, rows: int, columns: int, samples: int) -> np.ndarray:
    bits_allocated = int(ds.BitsAllocated)
    signed = int(ds.get("PixelRepresentation", 0)) == 1
    dtype = np.dtype(f"<{'i' if signed else 'u'}{bits_allocated // 8}")
    decoded = imagecodecs.dicomrle_decode(frame, dtype.str)
    count = rows * columns * samples
    if len(decoded) != count * dtype.itemsize:
        raise ValueError(f"RLE frame decodes to {len(decoded)} bytes, {count * dtype.itemsize} expected")
    # RLE stores one segment group per sample: the planes come out one after the other.
    planes = np.frombuffer(decoded, dtype=dtype).reshape(samples, rows, columns)
    return planes[0] if samples == 1 else planes.transpose(1, 2, 0)


def read_dicom(
    path: str | os.PathLike, reduce: int = 0, keep_codestream: bool = False, min_side: float | None = None
) -> DecodedImage:
    """Decode the first frame of a DICOM file to its stored pixel values.

    `reduce=r` decodes JPEG 2000 at 1/2^r of the full resolution directly from the coarser wavelet levels; r is
    clamped to the codestream's number of decomposition levels and ignored (0) for the other transfer syntaxes.
    `min_side` chooses r from the header instead: the deepest level that keeps the longer side >= min_side pixels.
    `keep_codestream` keeps a JPEG 2000 frame in `codestream` (for `openjpeg.decode` of a region later).
    Raises DicomError (naming the file) for absent, unreadable, truncated or corrupt files, unsupported transfer
    syntaxes and missing pixel data.
    """
    path = str(path)
    started = time.perf_counter()
    try:
        # pydicom only warns when a file ends inside an element (and then drops it): record the warnings so that
        # a truncated file is reported as truncated rather than as one without pixel data.
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ds = pydicom.dcmread(path)
    except FileNotFoundError:
        raise DicomError(path, "file not found") from None
    except IsADirectoryError:
        raise DicomError(path, "is a directory, not a DICOM file") from None
    except InvalidDicomError as error:
        raise DicomError(path, f"not a DICOM file ({error})") from None
    except Exception as error:  # pydicom raises many types on damaged headers (EOFError, ValueError, struct.error)
        raise DicomError(path, f"unreadable or truncated DICOM header ({type(error).__name__}: {error})") from None

    truncation = [str(w.message) for w in caught if "end of file" in str(w.message).lower()]
    if truncation:
        raise DicomError(path, f"truncated file ({truncation[0]})")
    if "PixelData" not in ds:
        raise DicomError(path, "no Pixel Data element (7FE0,0010)")
    file_meta = getattr(ds, "file_meta", None)
    transfer_syntax = str(getattr(file_meta, "TransferSyntaxUID", "") or IMPLICIT_VR_LITTLE_ENDIAN)
    if transfer_syntax not in SUPPORTED_SYNTAXES:
        name = pydicom.uid.UID(transfer_syntax).name
        raise DicomError(path, f"unsupported transfer syntax {transfer_syntax} ({name})")
    try:
        rows, columns = int(ds.Rows), int(ds.Columns)
        samples = int(ds.get("SamplesPerPixel", 1))
        bits_allocated = int(ds.BitsAllocated)
        number_of_frames = int(ds.get("NumberOfFrames", 1) or 1)  # pydicom's badVR.dcm has "1A"
    except (AttributeError, TypeError, ValueError) as error:
        raise DicomError(path, f"incomplete image pixel module ({error})") from None
    if bits_allocated not in (8, 16):
        raise DicomError(path, f"unsupported Bits Allocated {bits_allocated} (8 or 16 supported)")
    if min_side is not None:
        reduce = reduce_level_for(rows, columns, min_side, oversample=1.0)

    levels = None
    applied_reduce = 0
    codestream = None
    try:
        if transfer_syntax in NATIVE_SYNTAXES:
            family = "native"
            pixels = _native_frame(ds, transfer_syntax, rows, columns, samples)
        else:
            frame = next(generate_frames(ds.PixelData, number_of_frames=number_of_frames))
            if transfer_syntax in JPEG_2000_SYNTAXES:
                header = parse_j2k_header(frame)
                levels = header.decomposition_levels
                codestream = frame if keep_codestream else None
                applied_reduce = max(0, min(int(reduce), levels)) if header.components == 1 else 0
                pixels = None
                if applied_reduce > 0:
                    family = "jpeg2000_reduced"
                    try:
                        pixels = _decode_j2k_reduced(frame, header, applied_reduce)
                    except Exception:
                        # Pillow is only the fast route; the full-resolution decoder below is the judge of
                        # whether the stream is readable (it raises for corrupt or truncated data).
                        applied_reduce = 0
                if pixels is None:
                    family = "jpeg2000"
                    pixels = imagecodecs.jpeg2k_decode(frame, numthreads=1)
            elif transfer_syntax in JPEG_LOSSLESS_SYNTAXES:
                family = "jpeg_lossless"
                _require_end_marker(frame)
                pixels = imagecodecs.jpeg8_decode(frame)
            elif transfer_syntax in JPEG_LS_SYNTAXES:
                family = "jpeg_ls"
                _require_end_marker(frame)
                pixels = imagecodecs.jpegls_decode(frame)
            else:
                family = "rle"
                pixels = _rle_frame(frame, ds, rows, columns, samples)
    except DicomError:
        raise
    except Exception as error:  # decoders raise their own error types on corrupt or truncated streams
        raise DicomError(path, f"cannot decode pixel data ({type(error).__name__}: {error})") from None

    if applied_reduce == 0:
        expected = (rows, columns) if samples == 1 else (rows, columns, samples)
        if pixels.shape != expected:
            raise DicomError(path, f"decoded shape {pixels.shape} differs from the header's {expected}")
    elif pixels.shape[:2] != (math.ceil(rows / 2**applied_reduce), math.ceil(columns / 2**applied_reduce)):
        raise DicomError(path, f"reduced decode gave shape {pixels.shape} for a {rows} x {columns} image")
    del ds.PixelData  # the compressed copy is no longer needed; frees up to the full image size
    return DecodedImage(
        path=path,
        dataset=ds,
        pixels=pixels,
        transfer_syntax=transfer_syntax,
        decoder=DECODER_NAMES[family],
        reduce=applied_reduce,
        decomposition_levels=levels,
        full_shape=(rows, columns),
        number_of_frames=number_of_frames,
        decode_seconds=time.perf_counter() - started,
        codestream=codestream,
    )


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


# --------------------------------------------------------------------------------------------------------------
# The whole path
# --------------------------------------------------------------------------------------------------------------

PATH_MODES = ("exact", "reduced")


def reduce_level_for(rows: int, columns: int, image_size: int, oversample: float = 3.0) -> int:
    """Deepest JPEG 2000 reduction that keeps the longer side at least `oversample` x `image_size` pixels.

    Keeping more than image_size pixels leaves the final area average to smooth the wavelet low-pass output, and
    bounds the breast-box error (up to 2^r - 1 full-resolution pixels) to a fraction of an output pixel.
    """
    side = max(rows, columns)
    level = 0
    while math.ceil(side / 2 ** (level + 1)) >= oversample * image_size:
        level += 1
    return level


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
