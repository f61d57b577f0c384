"""Region-limited JPEG 2000 decoding through libopenjp2 (ctypes): bit-identical to whole-image decoders."""

from __future__ import annotations

import gc
import io

import imagecodecs
import numpy as np
import pytest
from PIL import Image

from leanmed.data import openjpeg

pytestmark = pytest.mark.skipif(not openjpeg.available(), reason=openjpeg.library_description())


def encode(pixels: np.ndarray, bits: int, **options) -> bytes:
    return imagecodecs.jpeg2k_encode(
        pixels, level=0, codecformat=options.pop("codecformat", "J2K"), reversible=True, bitspersample=bits, **options
    )


@pytest.fixture(scope="module")
def image_12_bit() -> np.ndarray:
    rng = np.random.default_rng(7)
    smooth = np.cumsum(rng.integers(-3, 4, size=(700, 530)), axis=1)
    return np.clip(2000 + smooth + rng.integers(0, 40, size=(700, 530)), 0, 4095).astype(np.uint16)


def test_library_is_openjpeg_2(image_12_bit):
    assert openjpeg.library_description().startswith("libopenjp2 2.")


def test_whole_image_equals_imagecodecs(image_12_bit):
    codestream = encode(image_12_bit, 12)
    decoded = openjpeg.decode(codestream)
    assert decoded.dtype == np.uint16
    np.testing.assert_array_equal(decoded, image_12_bit)
    np.testing.assert_array_equal(decoded, imagecodecs.jpeg2k_decode(codestream))


@pytest.mark.parametrize(
    "area",
    [(0, 700, 0, 530), (13, 611, 77, 402), (0, 1, 0, 1), (699, 700, 529, 530), (350, 700, 0, 265), (1, 699, 1, 529)],
)
def test_area_is_bit_identical_to_the_same_slice_of_a_whole_decode(image_12_bit, area):
    top, bottom, left, right = area
    decoded = openjpeg.decode(encode(image_12_bit, 12), area=area)
    np.testing.assert_array_equal(decoded, image_12_bit[top:bottom, left:right])


def test_area_of_a_tiled_multi_level_codestream(image_12_bit):
    output = io.BytesIO()
    Image.fromarray(image_12_bit).save(output, format="JPEG2000", tile_size=(256, 256), num_resolutions=4)
    codestream = output.getvalue()
    whole = imagecodecs.jpeg2k_decode(codestream)
    decoded = openjpeg.decode(codestream, area=(100, 600, 200, 500))
    np.testing.assert_array_equal(decoded, whole[100:600, 200:500])


def test_reduce_matches_pillow(image_12_bit):
    codestream = encode(image_12_bit, 16)  # Pillow returns 16-bit samples unshifted only at 16 bits
    image = Image.open(io.BytesIO(codestream))
    image.reduce = 2
    image.load()
    decoded = openjpeg.decode(codestream, reduce=2)
    assert decoded.shape == (175, 133)
    np.testing.assert_array_equal(decoded, np.asarray(image))


def test_signed_and_8_bit_samples():
    rng = np.random.default_rng(1)
    signed = rng.integers(-2000, 2000, size=(64, 48)).astype(np.int16)
    decoded = openjpeg.decode(encode(signed, 12), area=(5, 60, 3, 40))
    assert decoded.dtype == np.int16
    np.testing.assert_array_equal(decoded, signed[5:60, 3:40])
    bytes_8 = rng.integers(0, 256, size=(40, 30)).astype(np.uint8)
    decoded = openjpeg.decode(encode(bytes_8, 8))
    assert decoded.dtype == np.uint8
    np.testing.assert_array_equal(decoded, bytes_8)


def test_jp2_wrapped_codestream(image_12_bit):
    decoded = openjpeg.decode(encode(image_12_bit, 12, codecformat="JP2"), area=(10, 20, 30, 50))
    np.testing.assert_array_equal(decoded, image_12_bit[10:20, 30:50])


def test_decoding_leaves_no_reference_cycle_holding_the_codestream(image_12_bit):
    """The stream's callbacks refer back to it; left as a cycle, each decode's codestream (megabytes for a
    mammogram) would stay in memory until a cyclic garbage collection, and a worker's memory would climb."""
    codestream = encode(image_12_bit, 12)
    gc.collect()
    gc.disable()  # so that only reference counting can free the stream
    try:
        openjpeg.decode(codestream, area=(0, 10, 0, 10))
        streams_left = [item for item in gc.get_objects() if type(item) is openjpeg._MemoryStream]
    finally:
        gc.enable()
    assert streams_left == []


def test_corrupt_truncated_and_bad_areas_raise_with_openjpeg_messages(image_12_bit):
    codestream = encode(image_12_bit, 12)
    with pytest.raises(openjpeg.OpenJpegError, match="opj_read_header"):
        openjpeg.decode(b"\x00" * 200)
    with pytest.raises(openjpeg.OpenJpegError):
        openjpeg.decode(codestream[: len(codestream) // 2])
    with pytest.raises(ValueError, match="not inside the 700 x 530 image"):
        openjpeg.decode(codestream, area=(0, 800, 0, 530))
    with pytest.raises(ValueError, match="not inside"):
        openjpeg.decode(codestream, area=(10, 10, 0, 530))
    # The library state is not left broken: a good decode still works afterwards.
    np.testing.assert_array_equal(openjpeg.decode(codestream, area=(0, 5, 0, 5)), image_12_bit[:5, :5])


J2K_SAMPLES = ["MR_small_jp2klossless.dcm", "J2K_pixelrep_mismatch.dcm", "JPEG2000.dcm", "693_J2KI.dcm"]


@pytest.mark.parametrize("name", J2K_SAMPLES)
def test_pydicom_j2k_samples_decode_like_pylibjpeg_openjpeg(name):
    """Codestreams written elsewhere (pydicom's samples, lossless and lossy): the whole image and a rectangle equal
    pylibjpeg-openjpeg's decode (its own OpenJPEG build) of the same frame."""
    import openjpeg as pylibjpeg_openjpeg  # pylibjpeg-openjpeg's module
    import pydicom
    from pydicom.data import get_testdata_file

    path = get_testdata_file(name, download=False)
    assert path is not None, f"pydicom {pydicom.__version__} no longer ships its sample {name}"
    frame = next(pydicom.encaps.generate_frames(pydicom.dcmread(path).PixelData))
    reference = np.asarray(pylibjpeg_openjpeg.decode(frame))
    np.testing.assert_array_equal(openjpeg.decode(frame), reference)
    rows, columns = reference.shape
    area = (rows // 5, rows - rows // 7, columns // 3, columns - 1)
    np.testing.assert_array_equal(openjpeg.decode(frame, area=area), reference[area[0] : area[1], area[2] : area[3]])
