"""Region-limited JPEG 2000 decoding: OpenJPEG's `opj_set_decode_area` through ctypes.

Every JPEG 2000 decoder installed here (imagecodecs, Pillow, pylibjpeg-openjpeg) is OpenJPEG, and none of their
Python bindings exposes OpenJPEG's decode area: decoding only a rectangle of the image skips the code-blocks and
the inverse wavelet transform outside it, while the pixels inside are bit-identical to a whole-image decode. A
mammogram's breast covers about half of the detector, so the full-resolution pixels of the breast cost about
half of a whole decode.

The library is the libopenjp2 the Python packages already ship (imagecodecs' copy first, which is the whole-image
decoder leanmed uses, then Pillow's), or a system/conda one found by `ctypes.util.find_library`. `available()`
says whether one was found; callers fall back to a whole-image decode when not. Only the OpenJPEG 2.x API that
has been stable since 2.1 is used (opj_image_t, opj_image_comp_t and opj_dparameters_t are laid out as in 2.5).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import glob
import importlib.util
import os
from pathlib import Path

import numpy as np

OPJ_CODEC_J2K = 0  # a bare codestream (what DICOM encapsulates)
OPJ_CODEC_JP2 = 2  # a JP2 file wrapping one
_OPJ_PATH_LEN = 4096
_STREAM_CHUNK_BYTES = 1 << 20
_JP2_SIGNATURE = b"\x00\x00\x00\x0cjP  \r\n\x87\n"


class OpenJpegError(RuntimeError):
    """OpenJPEG refused the stream (corrupt, truncated) or the area; the message carries OpenJPEG's own words."""


class _DecoderParameters(ctypes.Structure):
    _fields_ = [
        ("cp_reduce", ctypes.c_uint32),
        ("cp_layer", ctypes.c_uint32),
        ("infile", ctypes.c_char * _OPJ_PATH_LEN),
        ("outfile", ctypes.c_char * _OPJ_PATH_LEN),
        ("decod_format", ctypes.c_int),
        ("cod_format", ctypes.c_int),
        ("DA_x0", ctypes.c_uint32),
        ("DA_x1", ctypes.c_uint32),
        ("DA_y0", ctypes.c_uint32),
        ("DA_y1", ctypes.c_uint32),
        ("m_verbose", ctypes.c_int),
        ("tile_index", ctypes.c_uint32),
        ("nb_tile_to_decode", ctypes.c_uint32),
        ("jpwl_correct", ctypes.c_int),
        ("jpwl_exp_comps", ctypes.c_int),
        ("jpwl_max_tiles", ctypes.c_int),
        ("flags", ctypes.c_uint),
        # Room to spare: a later OpenJPEG may append members, which the library's own default-setter writes.
        ("_reserved", ctypes.c_byte * 1024),
    ]


class _ImageComponent(ctypes.Structure):
    _fields_ = [
        ("dx", ctypes.c_uint32),
        ("dy", ctypes.c_uint32),
        ("w", ctypes.c_uint32),
        ("h", ctypes.c_uint32),
        ("x0", ctypes.c_uint32),
        ("y0", ctypes.c_uint32),
        ("prec", ctypes.c_uint32),
        ("bpp", ctypes.c_uint32),
        ("sgnd", ctypes.c_uint32),
        ("resno_decoded", ctypes.c_uint32),
        ("factor", ctypes.c_uint32),
        ("data", ctypes.POINTER(ctypes.c_int32)),
        ("alpha", ctypes.c_uint16),
    ]


class _Image(ctypes.Structure):
    _fields_ = [
        ("x0", ctypes.c_uint32),
        ("y0", ctypes.c_uint32),
        ("x1", ctypes.c_uint32),
        ("y1", ctypes.c_uint32),
        ("numcomps", ctypes.c_uint32),
        ("color_space", ctypes.c_int),
        ("comps", ctypes.POINTER(_ImageComponent)),
        ("icc_profile_buf", ctypes.c_void_p),
        ("icc_profile_len", ctypes.c_uint32),
    ]


_READ = ctypes.CFUNCTYPE(ctypes.c_size_t, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p)
_SKIP = ctypes.CFUNCTYPE(ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p)
_SEEK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int64, ctypes.c_void_p)
_MESSAGE = ctypes.CFUNCTYPE(None, ctypes.c_char_p, ctypes.c_void_p)


def _candidate_paths() -> list[str]:
    """libopenjp2 copies in the order tried: imagecodecs' (leanmed's whole-image decoder), Pillow's, the system's."""
    paths = []
    for package, libs in (("imagecodecs", "imagecodecs.libs"), ("PIL", "pillow.libs")):
        spec = importlib.util.find_spec(package)
        if spec and spec.origin:
            site = Path(spec.origin).parent.parent
            paths += sorted(glob.glob(str(site / libs / "libopenjp2*.so*")))
    system = ctypes.util.find_library("openjp2")
    if system:
        paths.append(system)
    return paths


@functools.cache
def _library() -> ctypes.CDLL | None:
    for path in [os.environ.get("LEANMED_OPENJP2", "")] + _candidate_paths():
        if not path:
            continue
        try:
            library = ctypes.CDLL(path)
            version = library.opj_version
        except (OSError, AttributeError):
            continue
        version.restype = ctypes.c_char_p
        if not version().decode().startswith("2."):
            continue
        _declare(library)
        library.leanmed_path = path
        return library
    return None


def _declare(library: ctypes.CDLL) -> None:
    p = ctypes.c_void_p
    signatures = {
        "opj_create_decompress": (p, [ctypes.c_int]),
        "opj_set_default_decoder_parameters": (
            None,
            [ctypes.POINTER(_DecoderParameters)],
        ),
        "opj_setup_decoder": (ctypes.c_int, [p, ctypes.POINTER(_DecoderParameters)]),
        "opj_set_error_handler": (ctypes.c_int, [p, _MESSAGE, p]),
        "opj_stream_create": (p, [ctypes.c_size_t, ctypes.c_int]),
        "opj_stream_set_read_function": (None, [p, _READ]),
        "opj_stream_set_skip_function": (None, [p, _SKIP]),
        "opj_stream_set_seek_function": (None, [p, _SEEK]),
        "opj_stream_set_user_data_length": (None, [p, ctypes.c_uint64]),
        "opj_read_header": (
            ctypes.c_int,
            [p, p, ctypes.POINTER(ctypes.POINTER(_Image))],
        ),
        "opj_set_decode_area": (
            ctypes.c_int,
            [
                p,
                ctypes.POINTER(_Image),
                ctypes.c_int32,
                ctypes.c_int32,
                ctypes.c_int32,
                ctypes.c_int32,
            ],
        ),
        "opj_decode": (ctypes.c_int, [p, p, ctypes.POINTER(_Image)]),
        "opj_end_decompress": (ctypes.c_int, [p, p]),
        "opj_image_destroy": (None, [ctypes.POINTER(_Image)]),
        "opj_stream_destroy": (None, [p]),
        "opj_destroy_codec": (None, [p]),
    }
    for name, (restype, argtypes) in signatures.items():
        function = getattr(library, name)
        function.restype, function.argtypes = restype, argtypes


def available() -> bool:
    """Whether a libopenjp2 2.x was found (region decoding possible)."""
    return _library() is not None


def library_description() -> str:
    """Which libopenjp2 is used, with its version, or why none is."""
    library = _library()
    if library is None:
        return "no libopenjp2 found (set LEANMED_OPENJP2 to its path)"
    return f"libopenjp2 {library.opj_version().decode()} ({Path(library.leanmed_path).name})"


class _MemoryStream:
    """OpenJPEG input stream over an in-memory codestream; the callbacks live as long as this object."""

    def __init__(self, library: ctypes.CDLL, data: bytes):
        self.data = data
        self.position = 0
        self.read, self.skip, self.seek = (
            _READ(self._read),
            _SKIP(self._skip),
            _SEEK(self._seek),
        )
        self.handle = library.opj_stream_create(_STREAM_CHUNK_BYTES, 1)
        if not self.handle:
            raise OpenJpegError("opj_stream_create failed")
        library.opj_stream_set_read_function(self.handle, self.read)
        library.opj_stream_set_skip_function(self.handle, self.skip)
        library.opj_stream_set_seek_function(self.handle, self.seek)
        library.opj_stream_set_user_data_length(self.handle, len(data))

    def close(self, library: ctypes.CDLL) -> None:
        """Destroy the OpenJPEG stream and drop the callbacks: they refer back to this object, a reference cycle
        that would otherwise keep the codestream alive until the next cyclic garbage collection."""
        library.opj_stream_destroy(self.handle)
        self.read = self.skip = self.seek = None
        self.data = b""

    def _read(self, buffer: int, size: int, _user: int) -> int:
        remaining = len(self.data) - self.position
        if remaining <= 0:
            return ctypes.c_size_t(-1).value  # OpenJPEG's end-of-stream
        count = min(size, remaining)
        ctypes.memmove(buffer, self.data[self.position : self.position + count], count)
        self.position += count
        return count

    def _skip(self, count: int, _user: int) -> int:
        target = min(max(self.position + count, 0), len(self.data))
        skipped, self.position = target - self.position, target
        return skipped

    def _seek(self, position: int, _user: int) -> int:
        if not 0 <= position <= len(self.data):
            return 0
        self.position = position
        return 1


def decode(codestream: bytes, area: tuple[int, int, int, int] | None = None, reduce: int = 0) -> np.ndarray:
    """Decode component 0 of a JPEG 2000 codestream (bare, or wrapped in JP2) to its stored sample values.

    `area` = (top, bottom, left, right) in full-resolution pixels of the image (bottom/right exclusive) decodes
    only that rectangle; None decodes the whole image. `reduce` decodes at 1/2^reduce resolution. Returns uint8 /
    int8 for precision <= 8 and uint16 / int16 otherwise, shape (rows, columns) of the area at that resolution.
    Raises OpenJpegError with OpenJPEG's messages for corrupt or truncated streams, ValueError for an area not
    inside the image, and RuntimeError when no libopenjp2 is available.
    """
    library = _library()
    if library is None:
        raise RuntimeError(library_description())
    messages: list[str] = []

    def collect(message: bytes, _user: int) -> None:
        messages.append(message.decode(errors="replace").strip())

    on_error = _MESSAGE(collect)
    data = bytes(codestream)
    codec_format = OPJ_CODEC_JP2 if data.startswith(_JP2_SIGNATURE) else OPJ_CODEC_J2K
    codec = library.opj_create_decompress(codec_format)
    stream = _MemoryStream(library, data)
    image_pointer = ctypes.POINTER(_Image)()
    try:
        library.opj_set_error_handler(codec, on_error, None)
        parameters = _DecoderParameters()
        library.opj_set_default_decoder_parameters(ctypes.byref(parameters))
        parameters.cp_reduce = int(reduce)
        # No opj_codec_set_threads: even 1 thread is a worker pool with a hand-off per code-block (slower than none).

        def check(ok: int, step: str) -> None:
            if not ok:
                raise OpenJpegError(f"{step} failed: {'; '.join(messages) or 'no message from OpenJPEG'}")

        check(
            library.opj_setup_decoder(codec, ctypes.byref(parameters)),
            "opj_setup_decoder",
        )
        check(
            library.opj_read_header(stream.handle, codec, ctypes.byref(image_pointer)),
            "opj_read_header",
        )
        if area is not None:
            top, bottom, left, right = (int(edge) for edge in area)
            image = image_pointer.contents
            height, width = image.y1 - image.y0, image.x1 - image.x0
            # OpenJPEG clips an area that leaves the image (with a warning only): refuse it instead.
            if not (0 <= top < bottom <= height and 0 <= left < right <= width):
                raise ValueError(
                    f"decode area {area} (top, bottom, left, right) is not inside the {height} x {width} image"
                )
            check(
                library.opj_set_decode_area(
                    codec,
                    image_pointer,
                    image.x0 + left,
                    image.y0 + top,
                    image.x0 + right,
                    image.y0 + bottom,
                ),
                f"opj_set_decode_area {area}",
            )
        check(library.opj_decode(codec, stream.handle, image_pointer), "opj_decode")
        check(library.opj_end_decompress(codec, stream.handle), "opj_end_decompress")
        component = image_pointer.contents.comps[0]
        rows, columns = int(component.h), int(component.w)
        if not component.data:
            raise OpenJpegError("no pixel data decoded")
        samples = np.ctypeslib.as_array(component.data, shape=(rows, columns))
        container = 8 if component.prec <= 8 else 16
        dtype = np.dtype(f"{'int' if component.sgnd else 'uint'}{container}")
        return samples.astype(dtype)  # a copy: OpenJPEG frees its buffer below
    finally:
        stream.close(library)
        library.opj_destroy_codec(codec)
        if image_pointer:
            library.opj_image_destroy(image_pointer)
