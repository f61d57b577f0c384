"""Tests of leanmed.data.dicom and its parts (dicom_decode, dicom_display, breast): decoding, VOI lookup table,
crop/pad/resize and errors.

Test DICOMs are written here with pydicom (and imagecodecs for the codecs pydicom cannot encode); the cross-checks
use pydicom's own sample files, read from its package directory (`get_testdata_files` would try to download the
pydicom-data files that are not installed).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import imagecodecs
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import DATA_ROOT
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.pixels import apply_modality_lut, apply_voi_lut
from pydicom.pixels import pixel_array as pydicom_pixel_array
from pydicom.uid import (
    JPEG2000,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
    generate_uid,
)

from leanmed.data import breast, dicom, dicom_decode, dicom_display

SAMPLES = Path(DATA_ROOT) / "test_files"
DIGITAL_MAMMOGRAPHY_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.2"


# ------------------------------------------------------------------------------------------------------------
# Helpers: write test DICOMs
# ------------------------------------------------------------------------------------------------------------


def base_dataset(pixels: np.ndarray, bits_stored: int = 12, photometric: str = "MONOCHROME2", **tags) -> Dataset:
    """A minimal single-frame grey MG dataset for `pixels` (uint16/int16), header only."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = DIGITAL_MAMMOGRAPHY_FOR_PRESENTATION
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "MG"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 16 if pixels.dtype.itemsize == 2 else 8
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 1 if pixels.dtype.kind == "i" else 0
    for key, value in tags.items():
        setattr(ds, key, value)
    return ds


def write_dicom(path, pixels: np.ndarray, transfer_syntax: str = ExplicitVRLittleEndian, **header) -> Path:
    """Write `pixels` as a DICOM file in `transfer_syntax`; extra keyword arguments become header tags."""
    path = Path(path)
    ds = base_dataset(pixels, **header)
    bits_stored = ds.BitsStored
    if transfer_syntax in (ExplicitVRLittleEndian, ImplicitVRLittleEndian):
        ds.file_meta.TransferSyntaxUID = transfer_syntax
        ds.PixelData = pixels.astype(pixels.dtype.newbyteorder("<")).tobytes()
    elif transfer_syntax in (RLELossless, JPEG2000Lossless):
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.PixelData = pixels.tobytes()
        ds.compress(transfer_syntax, pixels, generate_instance_uid=False)
    elif transfer_syntax == JPEG2000:
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.PixelData = pixels.tobytes()
        ds.compress(transfer_syntax, pixels, j2k_cr=[20], generate_instance_uid=False)
    else:
        if transfer_syntax == JPEGLosslessSV1:
            frame = imagecodecs.jpeg8_encode(pixels, lossless=True, predictor=1, bitspersample=bits_stored)
        elif transfer_syntax == JPEGLossless:
            frame = imagecodecs.jpeg8_encode(pixels, lossless=True, predictor=6, bitspersample=bits_stored)
        elif transfer_syntax == JPEGLSLossless:
            frame = imagecodecs.jpegls_encode(pixels, level=0)
        elif transfer_syntax == JPEGLSNearLossless:
            frame = imagecodecs.jpegls_encode(pixels, level=2)
        else:
            raise ValueError(transfer_syntax)
        ds.file_meta.TransferSyntaxUID = transfer_syntax
        ds.PixelData = encapsulate([frame])
        ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)
    return path


def synthetic_breast(height: int, width: int, on_right: bool = False, seed: int = 0, noise: float = 8.0) -> np.ndarray:
    """12-bit stored values (uint16) of a smooth half-ellipse 'breast' against one side, dark background."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    radius = ((yy - height / 2) / (0.4 * height)) ** 2 + (xx / (0.6 * width)) ** 2
    tissue = radius < 1
    values = np.where(tissue, 1200 + 2400 * np.sqrt(np.clip(1 - radius, 0, 1)), 100.0)
    values += rng.normal(0, noise, values.shape) * tissue
    values = np.clip(values, 0, 4095).astype(np.uint16)
    return values[:, ::-1].copy() if on_right else values


def sample(name: str) -> Path:
    path = SAMPLES / name
    assert path.exists(), f"pydicom {pydicom.__version__} no longer ships its sample {name}"
    return path


def stored_values(pixels: np.ndarray, ds: Dataset) -> np.ndarray:
    """Stored values as signed integers: masked to Bits Stored and sign-extended (independent of leanmed)."""
    bits = int(ds.BitsStored)
    values = pixels.astype(np.int64) & ((1 << bits) - 1)
    if int(ds.PixelRepresentation) == 1:
        values = np.where(values >= 1 << (bits - 1), values - (1 << bits), values)
    return values


# ------------------------------------------------------------------------------------------------------------
# Decoding round trips (files written here)
# ------------------------------------------------------------------------------------------------------------

ROUND_TRIP_SYNTAXES = [
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    RLELossless,
    JPEG2000Lossless,
    JPEGLosslessSV1,
    JPEGLossless,
    JPEGLSLossless,
]


@pytest.mark.parametrize("transfer_syntax", ROUND_TRIP_SYNTAXES, ids=lambda uid: uid.name)
def test_lossless_round_trip(tmp_path, transfer_syntax):
    pixels = np.random.default_rng(1).integers(0, 4096, size=(48, 40), dtype=np.uint16)
    path = write_dicom(tmp_path / "image.dcm", pixels, transfer_syntax)
    decoded = dicom_decode.read_dicom(path)
    assert decoded.transfer_syntax == transfer_syntax
    assert decoded.pixels.shape == pixels.shape
    np.testing.assert_array_equal(decoded.pixels, pixels)
    assert "PixelData" not in decoded.dataset


def test_signed_round_trip_rle(tmp_path):
    pixels = np.random.default_rng(2).integers(-2048, 2048, size=(32, 30), dtype=np.int16)
    path = write_dicom(tmp_path / "signed.dcm", pixels, RLELossless)
    np.testing.assert_array_equal(dicom_decode.read_dicom(path).pixels, pixels)


@pytest.mark.parametrize("transfer_syntax", [JPEG2000, JPEGLSNearLossless], ids=lambda uid: uid.name)
def test_lossy_syntaxes_match_pydicom(tmp_path, transfer_syntax):
    pixels = synthetic_breast(64, 48)
    path = write_dicom(tmp_path / "lossy.dcm", pixels, transfer_syntax)
    ours = dicom_decode.read_dicom(path).pixels
    reference = pydicom_pixel_array(path)  # pylibjpeg: openjpeg / libjpeg wrappers, not imagecodecs
    np.testing.assert_array_equal(ours.astype(np.int64), reference.astype(np.int64))
    if transfer_syntax == JPEGLSNearLossless:
        assert np.abs(ours.astype(int) - pixels).max() <= 2  # near-lossless error bound used to encode


def test_sv1_written_here_decodes_the_same_with_pylibjpeg(tmp_path):
    """The SV1 encoder used in these tests makes streams another decoder reads identically."""
    pixels = synthetic_breast(64, 48)
    path = write_dicom(tmp_path / "sv1.dcm", pixels, JPEGLosslessSV1)
    np.testing.assert_array_equal(pydicom_pixel_array(path, decoding_plugin="pylibjpeg"), pixels)


# ------------------------------------------------------------------------------------------------------------
# Cross-check on pydicom's sample files (written by other software)
# ------------------------------------------------------------------------------------------------------------

GREY_SAMPLES = [
    ("MR_small_jp2klossless.dcm", "pylibjpeg"),  # JPEG 2000 lossless, signed 16-bit
    ("J2K_pixelrep_mismatch.dcm", "pylibjpeg"),  # JPEG 2000 lossless, codestream unsigned, header signed 13-bit
    ("JPEG2000.dcm", "pylibjpeg"),  # JPEG 2000 lossy, signed
    ("693_J2KI.dcm", "pylibjpeg"),  # JPEG 2000 lossy, signed 14-bit
    ("MR_small_jpeg_ls_lossless.dcm", "pylibjpeg"),  # JPEG-LS lossless
    ("JPEGLSNearLossless_16.dcm", "pylibjpeg"),
    ("JPEGLSNearLossless_08.dcm", "pylibjpeg"),
    ("MR_small_RLE.dcm", "pydicom"),  # RLE, decoded by pydicom's own RLE decoder
    ("MR_small.dcm", "pydicom"),  # explicit VR little endian
    ("MR_small_implicit.dcm", "pydicom"),
    ("MR_small_bigendian.dcm", "pydicom"),  # explicit VR big endian
    ("CT_small.dcm", "pydicom"),
    ("image_dfl.dcm", "pydicom"),  # deflated explicit VR little endian
]


@pytest.mark.parametrize("name,plugin", GREY_SAMPLES, ids=[name for name, _ in GREY_SAMPLES])
def test_samples_decode_like_an_independent_decoder(name, plugin):
    path = sample(name)
    ds = pydicom.dcmread(path)
    reference = pydicom_pixel_array(ds, decoding_plugin=plugin)
    ours = dicom_decode.read_dicom(path).pixels
    np.testing.assert_array_equal(stored_values(ours, ds), stored_values(reference, ds))


COLOUR_SAMPLES = ["SC_rgb_jpeg_gdcm.dcm", "SC_rgb_rle.dcm", "SC_rgb_rle_16bit.dcm", "examples_jpeg2k.dcm"]


@pytest.mark.parametrize("name", COLOUR_SAMPLES)
def test_colour_samples_decode_like_pydicom(name):
    """JPEG Lossless SV1 has no grey sample here: its cross-check uses the RGB one (libjpeg-turbo vs libjpeg)."""
    path = sample(name)
    reference = pydicom_pixel_array(path, decoding_plugin="pydicom" if "rle" in name else "pylibjpeg")
    np.testing.assert_array_equal(dicom_decode.read_dicom(path).pixels, reference)


def pydicom_display(ds: Dataset) -> np.ndarray:
    """pydicom's modality LUT + VOI of `ds`, scaled to 0..1 over the modality output's range, not inverted."""
    reference = apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds).astype(np.float64)
    low = -(2 ** (ds.BitsStored - 1)) if ds.PixelRepresentation else 0
    span = 2**ds.BitsStored - 1
    if "RescaleSlope" in ds:
        span = span * float(ds.RescaleSlope)
        low = low * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    return (reference - low) / span


def leanmed_display(path: Path, photometric: str | None = None) -> np.ndarray:
    """leanmed's single lookup table applied to the decoded file (optionally read as another photometric)."""
    decoded = dicom_decode.read_dicom(path)
    if photometric:
        decoded.dataset.PhotometricInterpretation = photometric
    return np.take(dicom_display.voi_lut(decoded.dataset, dtype=np.float32), dicom_display.lut_indices(decoded.pixels))


@pytest.mark.parametrize("name", ["MR_small_jpeg_ls_lossless.dcm", "CT_small.dcm", "MR_small_jp2klossless.dcm"])
@pytest.mark.parametrize("photometric", ["MONOCHROME2", "MONOCHROME1"])
def test_samples_lookup_table_matches_pydicom_voi(tmp_path, name, photometric):
    """leanmed's single table == pydicom's modality LUT + windowing (+ inversion for MONOCHROME1), on grey
    samples of other syntaxes relabelled MONOCHROME1 (the real MONOCHROME1 samples are checked below)."""
    ds = pydicom.dcmread(sample(name))
    ds.PhotometricInterpretation = photometric
    if "WindowCenter" not in ds:
        ds.WindowCenter, ds.WindowWidth = 100, 400
    reference = pydicom_display(ds)
    if photometric == "MONOCHROME1":
        reference = 1 - reference
    path = tmp_path / "relabelled.dcm"
    ds.save_as(path)
    ours = leanmed_display(path)
    np.testing.assert_allclose(ours, reference, atol=1e-6)
    if photometric == "MONOCHROME1":
        np.testing.assert_allclose(ours, 1 - leanmed_display(path, "MONOCHROME2"), atol=1e-6)


MONOCHROME1_SAMPLES = sorted((SAMPLES / "dicomdirtests" / "77654033").glob("CR*/*"))


@pytest.mark.parametrize("path", MONOCHROME1_SAMPLES, ids=lambda path: path.parent.name)
def test_real_monochrome1_samples_are_inverted(path):
    """pydicom's three MONOCHROME1 CR images (written elsewhere, windowed, rescaled): leanmed's table equals
    1 - pydicom's windowed values, so the highest stored values (least attenuation when MONOCHROME1) come out
    darkest and the lowest brightest."""
    ds = pydicom.dcmread(path)
    assert ds.PhotometricInterpretation == "MONOCHROME1" and "WindowCenter" in ds and "RescaleSlope" in ds
    ours = leanmed_display(path)
    np.testing.assert_allclose(ours, 1 - pydicom_display(ds), atol=1e-6)
    stored = ds.pixel_array
    assert ours.flat[np.argmax(stored)] == ours.min() and ours.flat[np.argmin(stored)] == ours.max()
    assert ours.max() > ours.min()
    np.testing.assert_allclose(ours, 1 - leanmed_display(path, "MONOCHROME2"), atol=1e-6)


def test_monochrome1_samples_are_installed():
    """The check above must not pass by skipping: pydicom 3.0.2 ships these three files."""
    assert len(MONOCHROME1_SAMPLES) == 3


def test_pillow_reduced_decoder_gives_stored_values_on_samples():
    """Pillow widens samples to 8/16 bits (offset for signed, shift for < 16 bits); undoing it must be exact."""
    for name in ["MR_small_jp2klossless.dcm", "J2K_pixelrep_mismatch.dcm", "JPEG2000.dcm", "693_J2KI.dcm"]:
        ds = pydicom.dcmread(sample(name))
        frame = next(pydicom.encaps.generate_frames(ds.PixelData, number_of_frames=1))
        header = dicom_decode.parse_j2k_header(frame)
        via_pillow = dicom_decode._decode_j2k_reduced(frame, header, reduce=0)
        np.testing.assert_array_equal(via_pillow, imagecodecs.jpeg2k_decode(frame), err_msg=name)


def test_pillow_reduced_decoder_on_12_bit_unsigned():
    pixels = synthetic_breast(64, 48)
    frame = imagecodecs.jpeg2k_encode(pixels, level=0, codecformat="J2K", reversible=True, bitspersample=12)
    header = dicom_decode.parse_j2k_header(frame)
    assert (header.precision, header.signed, header.width, header.height) == (12, False, 48, 64)
    np.testing.assert_array_equal(dicom_decode._decode_j2k_reduced(frame, header, 0), pixels)


# ------------------------------------------------------------------------------------------------------------
# JPEG 2000 reduced decoding
# ------------------------------------------------------------------------------------------------------------


def test_reduce_decodes_at_lower_resolution_and_is_clamped(tmp_path):
    pixels = synthetic_breast(256, 192)
    path = write_dicom(tmp_path / "j2k.dcm", pixels, JPEG2000Lossless)
    ds = pydicom.dcmread(path)
    levels = dicom_decode.parse_j2k_header(next(pydicom.encaps.generate_frames(ds.PixelData))).decomposition_levels
    assert levels >= 2
    half = dicom_decode.read_dicom(path, reduce=1)
    assert half.reduce == 1 and half.pixels.shape == (128, 96)
    # The reduced image is a low-pass copy of the original: close to its 2x2 block means.
    block_means = pixels.reshape(128, 2, 96, 2).mean(axis=(1, 3))
    assert np.abs(half.pixels.astype(float) - block_means).mean() < 20
    deepest = dicom_decode.read_dicom(path, reduce=99)
    assert deepest.reduce == levels
    assert deepest.pixels.shape == (math.ceil(256 / 2**levels), math.ceil(192 / 2**levels))


@pytest.mark.parametrize("shape", [(1001, 777), (1003, 778), (64, 48)])
def test_reduced_sizes_follow_openjpeg_for_any_image_size(shape):
    """Pillow's own reduced canvas is one pixel short when size mod 2^r is 1..2^(r-1)-1 (e.g. 1001 at r=2)."""
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    pixels = (2000 + 1000 * np.sin(yy / 50) * np.cos(xx / 70)).astype(np.uint16)
    frame = imagecodecs.jpeg2k_encode(pixels, level=0, codecformat="J2K", reversible=True, bitspersample=12)
    header = dicom_decode.parse_j2k_header(frame)
    for reduce in range(1, header.decomposition_levels + 1):
        scale = 2**reduce
        reduced = dicom_decode._decode_j2k_reduced(frame, header, reduce)
        assert reduced.shape == (math.ceil(shape[0] / scale), math.ceil(shape[1] / scale))
        if reduce <= 3:  # low-pass sample k sits on full-resolution sample 2^r k (smooth image: nearly equal)
            assert np.abs(reduced.astype(int) - pixels[::scale, ::scale]).max() <= 12


def test_reduce_is_ignored_for_other_syntaxes(tmp_path):
    pixels = synthetic_breast(64, 48)
    path = write_dicom(tmp_path / "sv1.dcm", pixels, JPEGLosslessSV1)
    decoded = dicom_decode.read_dicom(path, reduce=3)
    assert decoded.reduce == 0
    np.testing.assert_array_equal(decoded.pixels, pixels)


def test_reduced_path_within_one_grey_level_of_exact(tmp_path):
    pixels = synthetic_breast(1024, 768, seed=3)
    path = write_dicom(tmp_path / "j2k.dcm", pixels, JPEG2000Lossless, WindowCenter=2400, WindowWidth=3000)
    exact, exact_info = dicom.preprocess(path, image_size=64, path_mode="exact")
    reduced, reduced_info = dicom.preprocess(path, image_size=64, path_mode="reduced")
    assert exact_info["reduce"] == 0 and reduced_info["reduce"] >= 2
    assert np.abs(exact.astype(float) - reduced.astype(float)).mean() <= 1.0


def whole_decode_preprocess(path, **options):
    """preprocess with region decoding off: the whole image is decoded."""
    return dicom.preprocess(path, region_decoding=False, **options)


needs_openjpeg = pytest.mark.skipif(not dicom.openjpeg.available(), reason=dicom.openjpeg.library_description())


@needs_openjpeg
@pytest.mark.parametrize("on_right", [False, True])
def test_exact_j2k_decodes_only_the_breast_box_and_equals_a_whole_decode(tmp_path, monkeypatch, on_right):
    pixels = synthetic_breast(1600, 1200, on_right=on_right, seed=5)
    pixels[40:90, 1000 if not on_right else 60 : 1140 if not on_right else 200] = 4000  # a label off the breast
    path = write_dicom(tmp_path / "j2k.dcm", pixels, JPEG2000Lossless, WindowCenter=2400, WindowWidth=3000)
    region, region_info = dicom.preprocess(path, image_size=128, path_mode="exact")
    whole, whole_info = whole_decode_preprocess(path, image_size=128, path_mode="exact")
    assert region_info["decoder"] == dicom_decode.DECODER_NAMES["jpeg2000_region"]
    assert whole_info["decoder"] == dicom_decode.DECODER_NAMES["jpeg2000"] and whole_info["decode_area"] is None
    top, bottom, left, right = region_info["decode_area"]
    assert (bottom - top) * (right - left) < 0.7 * pixels.size  # the label and most background never decoded
    assert region_info["breast_box"] == whole_info["breast_box"]
    box_top, box_bottom, box_left, box_right = region_info["breast_box"]
    assert top <= box_top and box_bottom <= bottom and left <= box_left and box_right <= right
    assert region_info["flipped"] == whole_info["flipped"] == on_right
    np.testing.assert_array_equal(region, whole)


@needs_openjpeg
def test_region_falls_back_to_a_whole_decode_when_the_breast_leaves_the_decoded_area(tmp_path, monkeypatch):
    """A one-pixel bright line (a wire, a skin fold) is averaged away on the coarse image; at full resolution it
    reaches the decoded area's border, so the region cannot be trusted and the whole image is decoded."""
    pixels = synthetic_breast(1600, 1200, seed=6)
    pixels[50:800, 300] = 2000  # from near the top down into the breast; too thin and dim to show when coarse
    path = write_dicom(tmp_path / "j2k.dcm", pixels, JPEG2000Lossless, WindowCenter=2400, WindowWidth=3000)
    image, info = dicom.preprocess(path, image_size=128, path_mode="exact")
    assert info["decoder"] == dicom_decode.DECODER_NAMES["jpeg2000"] and info["decode_area"] is None
    assert info["breast_box"][0] == 50  # the line is part of the box, as on a whole decode
    whole, whole_info = whole_decode_preprocess(path, image_size=128, path_mode="exact")
    assert info["breast_box"] == whole_info["breast_box"]
    np.testing.assert_array_equal(image, whole)


@needs_openjpeg
def test_region_needs_a_voi_else_the_whole_image_is_decoded(tmp_path, monkeypatch):
    """Without a window the table is scaled by the whole image's range, which a region cannot give."""
    path = write_dicom(tmp_path / "j2k.dcm", synthetic_breast(1600, 1200, seed=7), JPEG2000Lossless)
    image, info = dicom.preprocess(path, image_size=64, path_mode="exact")
    assert info["decoder"] == dicom_decode.DECODER_NAMES["jpeg2000"] and info["voi"]["voi"] != "window"
    np.testing.assert_array_equal(image, whole_decode_preprocess(path, image_size=64)[0])


def test_without_libopenjp2_the_whole_image_is_decoded(tmp_path, monkeypatch):
    path = write_dicom(
        tmp_path / "j2k.dcm", synthetic_breast(1600, 1200), JPEG2000Lossless, WindowCenter=2400, WindowWidth=3000
    )
    monkeypatch.setattr(dicom.openjpeg, "available", lambda: False)
    image, info = dicom.preprocess(path, image_size=64)
    assert info["decoder"] == dicom_decode.DECODER_NAMES["jpeg2000"] and info["decode_area"] is None
    np.testing.assert_array_equal(image, whole_decode_preprocess(path, image_size=64)[0])


def test_truncated_j2k_stream_fails_in_the_region_path_too(tmp_path):
    """The coarse decode reads only the first resolution levels; a stream cut inside the finer ones is refused."""
    pixels = synthetic_breast(1600, 1200, seed=8)
    frame = imagecodecs.jpeg2k_encode(pixels, level=0, codecformat="J2K", reversible=True, bitspersample=12)
    ds = base_dataset(pixels, WindowCenter=2400, WindowWidth=3000)
    ds.file_meta.TransferSyntaxUID = JPEG2000Lossless
    ds.PixelData = encapsulate([frame[: len(frame) * 9 // 10]])
    ds["PixelData"].VR = "OB"
    path = tmp_path / "cut_j2k.dcm"
    ds.save_as(path, enforce_file_format=True)
    expect_error(path, "cannot decode")


# ------------------------------------------------------------------------------------------------------------
# VOI lookup table
# ------------------------------------------------------------------------------------------------------------


def lut_dataset(**tags) -> Dataset:
    ds = Dataset()
    ds.BitsAllocated, ds.BitsStored, ds.PixelRepresentation = 16, 12, 0
    ds.PhotometricInterpretation = "MONOCHROME2"
    for key, value in tags.items():
        setattr(ds, key, value)
    return ds


def test_linear_window_hand_computed():
    # c=100, w=50: 0 at or below 100-0.5-24.5=75, 1 above 124, ((x-99.5)/49+0.5) between
    lut = dicom_display.voi_lut(lut_dataset(WindowCenter=100, WindowWidth=50), dtype=np.float32)
    assert lut[75] == 0.0
    assert lut[76] == pytest.approx((76 - 99.5) / 49 + 0.5)
    assert lut[100] == pytest.approx(0.5 / 49 + 0.5)
    assert lut[124] == pytest.approx(1.0)
    assert lut[125] == 1.0


def test_linear_exact_and_rescale_hand_computed():
    ds = lut_dataset(WindowCenter=100, WindowWidth=50, VOILUTFunction="LINEAR_EXACT")
    ds.RescaleSlope, ds.RescaleIntercept = 2, -10
    lut = dicom_display.voi_lut(ds, dtype=np.float32)
    assert lut[55] == pytest.approx(0.5)  # 2*55-10 = 100 = centre
    assert lut[60] == pytest.approx(0.7)  # x=110: (110-100)/50+0.5
    assert lut[42] == 0.0  # x=74 <= 75
    assert lut[68] == 1.0  # x=126 > 125


def test_sigmoid_hand_computed():
    lut = dicom_display.voi_lut(
        lut_dataset(WindowCenter=1000, WindowWidth=400, VOILUTFunction="SIGMOID"), dtype=np.float32
    )
    assert lut[1000] == pytest.approx(0.5)
    assert lut[1100] == pytest.approx(1 / (1 + math.exp(-1)), rel=1e-6)  # x = c + w/4
    assert lut[800] == pytest.approx(1 / (1 + math.exp(2)), rel=1e-6)  # x = c - w/2


def test_first_of_several_windows_is_used():
    lut = dicom_display.voi_lut(lut_dataset(WindowCenter=[100, 2000], WindowWidth=[50, 10]), dtype=np.float32)
    assert lut[100] == pytest.approx(0.5 / 49 + 0.5)


def test_voi_lut_sequence_takes_precedence():
    item = Dataset()
    item.LUTDescriptor = [4, 10, 8]
    item.LUTData = [0, 85, 170, 255]
    ds = lut_dataset(WindowCenter=100, WindowWidth=50)
    ds.VOILUTSequence = [item]
    lut = dicom_display.voi_lut(ds, dtype=np.float32)
    assert lut[9] == 0.0 and lut[10] == 0.0
    assert lut[11] == pytest.approx(85 / 255)
    assert lut[13] == 1.0 and lut[4000] == 1.0


def test_no_window_uses_image_range_else_stored_range():
    ds = lut_dataset()
    lut = dicom_display.voi_lut(ds, stored_min=100, stored_max=300, dtype=np.float32)
    assert lut[100] == 0.0 and lut[200] == pytest.approx(0.5) and lut[300] == 1.0
    full = dicom_display.voi_lut(ds, dtype=np.uint16)
    assert full[0] == 0 and full[4095] == dicom_display.LUT_MAX


def test_monochrome1_inverted_so_tissue_is_bright():
    ds = lut_dataset(PhotometricInterpretation="MONOCHROME1", WindowCenter=2048, WindowWidth=4096)
    lut = dicom_display.voi_lut(ds)
    assert lut[0] == dicom_display.LUT_MAX and lut[4095] == 0


def test_monochrome1_image_comes_out_with_bright_tissue(tmp_path):
    breast = synthetic_breast(128, 96)
    inverted = (4095 - breast).astype(np.uint16)  # MONOCHROME1: attenuating tissue has low stored values
    path = write_dicom(tmp_path / "mono1.dcm", inverted, PhotometricInterpretation="MONOCHROME1")
    image, info = dicom.preprocess(path, image_size=32)
    assert info["voi"]["inverted"]
    assert image[16, 4] > 100 and image[2, 30] < 20  # breast centre bright, corner background dark


def test_signed_patterns_index_the_same_entry_with_or_without_sign_extension():
    ds = lut_dataset(PixelRepresentation=1, WindowCenter=0, WindowWidth=100, VOILUTFunction="LINEAR_EXACT")
    lut = dicom_display.voi_lut(ds, dtype=np.float32)
    sign_extended = np.array([-5], dtype=np.int16).view(np.uint16)[0]  # 0xFFFB
    twelve_bit = int(sign_extended) & 0x0FFF  # 0x0FFB: high bits left clear
    assert lut[sign_extended] == lut[twelve_bit] == pytest.approx(0.45)


# ------------------------------------------------------------------------------------------------------------
# Crop, flip, pad, resize
# ------------------------------------------------------------------------------------------------------------


def test_crop_finds_a_known_rectangle_and_ignores_a_label():
    rng = np.random.default_rng(4)
    image = rng.normal(500, 50, size=(1200, 900)).clip(0).astype(np.uint16)  # noisy background
    image[203:1001, 0:517] = 30000  # the breast
    image[1100:1130, 800:880] = 40000  # a bright label, smaller
    crop = breast.crop_to_breast(image)
    assert crop.found
    assert crop.box == (203, 1001, 0, 517)
    assert crop.image.shape == (798, 517)


def test_crop_finds_an_ellipse_at_full_resolution():
    height, width = 2000, 1500
    yy, xx = np.mgrid[0:height, 0:width]
    inside = ((yy - 1000) / 700.0) ** 2 + ((xx - 500) / 420.0) ** 2 <= 1
    image = np.where(inside, 50000, 1000).astype(np.uint16)
    rows, columns = (np.flatnonzero(inside.any(axis=1)), np.flatnonzero(inside.any(axis=0)))
    box, found, _ = breast.find_breast(image)
    assert found
    assert box == (rows[0], rows[-1] + 1, columns[0], columns[-1] + 1)


def test_crop_of_blank_image_returns_it_unchanged():
    for blank in (np.zeros((300, 200), np.uint16), np.full((300, 200), 777, np.uint16)):
        crop = breast.crop_to_breast(blank)
        assert not crop.found and crop.box == (0, 300, 0, 200) and crop.image.shape == blank.shape


def test_pad_to_square_never_stretches():
    image = np.arange(8, dtype=np.uint8).reshape(4, 2) + 1
    square = breast.pad_to_square(image, fill=0, anchor="left")
    assert square.shape == (4, 4)
    np.testing.assert_array_equal(square[:, :2], image)
    assert (square[:, 2:] == 0).all()
    np.testing.assert_array_equal(breast.pad_to_square(image, anchor="right")[:, 2:], image)
    np.testing.assert_array_equal(breast.pad_to_square(image, anchor="center")[:, 1:3], image)
    wide = breast.pad_to_square(image.T, anchor="left")  # wide images are centred vertically
    assert (wide[0] == 0).all() and (wide[3] == 0).all()
    np.testing.assert_array_equal(wide[1:3], image.T)


def test_preprocess_keeps_aspect_and_pads_with_background(tmp_path):
    stored = np.full((400, 300), 100, dtype=np.uint16)
    stored[0:400, 0:100] = 3000  # a 4:1 tall 'breast' filling the height
    path = write_dicom(tmp_path / "tall.dcm", stored, WindowCenter=2048, WindowWidth=4096)
    image, info = dicom.preprocess(path, image_size=64)
    assert image.shape == (64, 64) and image.dtype == np.uint8
    assert info["breast_box"] == (0, 400, 0, 100)
    assert (image[:, :16] > 150).all()  # 64 x 16 tissue: aspect 4:1 kept
    assert (image[:, 16:] == 0).all()  # the rest is padding


def test_breast_on_the_right_is_flipped_to_the_left(tmp_path):
    path = write_dicom(tmp_path / "right.dcm", synthetic_breast(160, 120, on_right=True))
    image, info = dicom.preprocess(path, image_size=32)
    assert info["flipped"]
    assert image[:, :8].mean() > image[:, -8:].mean()
    kept, kept_info = dicom.preprocess(path, image_size=32, flip_to_left=False)
    assert not kept_info["flipped"]


def test_preprocess_16_bit_output_and_area_averaging(tmp_path):
    stored = np.full((64, 64), 0, dtype=np.uint16)
    stored[:, :32] = 4095
    stored[::2, :32] = 2048  # alternating rows: the area average of the tissue is the mean of both
    path = write_dicom(tmp_path / "stripes.dcm", stored)
    image, info = dicom.preprocess(path, image_size=16, bits=16)
    assert image.dtype == np.uint16
    assert info["breast_box"] == (0, 64, 0, 32)  # 64 x 32 tissue -> 16 x 8, padded on the right
    expected = ((2048 + 4095) / 2) / 4095 * 65535  # no window: linear over the image's own 0..4095
    assert np.abs(image[:, :8].astype(float) - expected).max() <= 1
    assert (image[:, 8:] == 0).all()


def test_write_png_is_atomic_and_round_trips(tmp_path):
    for dtype, mode in ((np.uint8, "L"), (np.uint16, "I;16")):
        array = (np.arange(64 * 64).reshape(64, 64) % np.iinfo(dtype).max).astype(dtype)
        target = tmp_path / "sub" / f"image_{mode}.png"
        dicom.write_png(array, target)
        with Image.open(target) as png:
            assert png.mode == mode
            np.testing.assert_array_equal(np.asarray(png), array)
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["image_I;16.png", "image_L.png"]


# ------------------------------------------------------------------------------------------------------------
# Errors name the file and the reason
# ------------------------------------------------------------------------------------------------------------


def expect_error(path, *words):
    with pytest.raises(dicom_decode.DicomError) as caught:
        dicom.preprocess(path, image_size=32)
    message = str(caught.value)
    assert str(path) in message
    for word in words:
        assert word in message.lower()
    return message


def test_absent_file(tmp_path):
    expect_error(tmp_path / "missing.dcm", "not found")


def test_corrupt_file(tmp_path):
    path = tmp_path / "garbage.dcm"
    path.write_bytes(os.urandom(4000))
    expect_error(path, "not a dicom")


def test_truncated_file(tmp_path):
    path = write_dicom(tmp_path / "full.dcm", synthetic_breast(128, 96), JPEG2000Lossless)
    data = path.read_bytes()
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(data[: len(data) * 2 // 3])
    expect_error(cut, "truncated")
    raw = write_dicom(tmp_path / "raw.dcm", synthetic_breast(128, 96))
    raw_cut = tmp_path / "raw_cut.dcm"
    raw_cut.write_bytes(raw.read_bytes()[:-1000])
    expect_error(raw_cut, "truncated")


def test_truncated_jpeg_lossless_stream_inside_an_intact_file(tmp_path):
    """libjpeg-turbo would fill a cut lossless stream silently: the missing end marker must be caught."""
    pixels = synthetic_breast(128, 96)
    frame = imagecodecs.jpeg8_encode(pixels, lossless=True, predictor=1, bitspersample=12)
    ds = base_dataset(pixels)
    ds.file_meta.TransferSyntaxUID = JPEGLosslessSV1
    ds.PixelData = encapsulate([frame[: len(frame) // 2]])
    ds["PixelData"].VR = "OB"
    path = tmp_path / "cut_stream.dcm"
    ds.save_as(path, enforce_file_format=True)
    expect_error(path, "truncated")


def test_corrupt_j2k_stream(tmp_path):
    pixels = synthetic_breast(128, 96)
    path = write_dicom(tmp_path / "j2k.dcm", pixels, JPEG2000Lossless)
    ds = pydicom.dcmread(path)
    frame = bytearray(next(pydicom.encaps.generate_frames(ds.PixelData)))
    frame[len(frame) // 2 : len(frame) // 2 + 64] = os.urandom(64)
    frame[-2:] = b"\x00\x00"
    ds.PixelData = encapsulate([bytes(frame)])
    ds.save_as(path)
    expect_error(path, "cannot decode")


def test_no_pixel_data(tmp_path):
    path = write_dicom(tmp_path / "image.dcm", synthetic_breast(32, 32))
    ds = pydicom.dcmread(path)
    del ds.PixelData
    ds.save_as(path)
    expect_error(path, "no pixel data")


def test_unsupported_transfer_syntax():
    expect_error(sample("JPGExtended.dcm"), "unsupported transfer syntax", "1.2.840.10008.1.2.4.51")


def test_colour_image_is_refused_by_preprocess():
    expect_error(sample("SC_rgb_rle.dcm"), "not a grey image")


def test_unsupported_bits_allocated():
    expect_error(sample("liver_1frame.dcm"), "bits allocated 1")
