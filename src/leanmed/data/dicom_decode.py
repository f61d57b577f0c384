"""Decoding a DICOM's stored pixel values: the transfer syntaxes read, the decoder used for each, `read_dicom`.

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

import io
import math
import os
import struct
import time
import warnings
from dataclasses import dataclass
from typing import NamedTuple

import imagecodecs
import numpy as np
import pydicom
from PIL import Image, ImageFile
from pydicom.encaps import generate_frames
from pydicom.errors import InvalidDicomError

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
