"""leanmed's DICOM path on real files written by others: pydicom's installed test files and pydicom-data's
(PyPI `pydicom-data`, a test extra: the NEMA compression set, LUT samples, a truncated JPEG 2000).

- Every single-frame grey image gives a display image (`dicom_display.display_image`: leanmed's decode and its one
  lookup table, before crop and resize) that agrees with pydicom's own chain (modality LUT, VOI, MONOCHROME1 inversion)
  at Pearson r >= 0.999. Files pydicom itself cannot decode here (no reference) must be refused by leanmed; so must
  files leanmed refuses by design (transfer syntaxes and Bits Allocated no mammography system writes), each with a
  DicomError saying why. Colour and multi-frame files are no mammograms: preprocessing refuses them naming the file.
- The NEMA lossless JPEG 2000 / uncompressed pairs give byte-identical PNGs through the exact path, with the
  region (breast-box) decode and with a whole decode, and the reduced path stays within one grey level of them.
- The truncated file is refused with its name, and a shard conversion excludes it with that reason.
- Crafted: garbage/overlay bits above Bits Stored and signed words that are not sign-extended do not change the
  display range (pydicom-data's mlut_18.dcm agreed at r = 0.80 before `dicom_display.stored_range`).

The files are listed from the installed folders: `pydicom.data.get_testdata_files()` also asks pydicom's download
list for files it does not find, so it is not used.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from PIL import Image
from pydicom.data import DATA_ROOT
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels import apply_modality_lut, apply_voi_lut
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from leanmed.data import convert, dicom, dicom_decode, dicom_display

try:  # pydicom-data installs its files as the package `data_store`, under data_store/data/
    from data_store import DataStore

    PYDICOM_DATA: Path | None = Path(DataStore().data_path)
except ImportError:
    PYDICOM_DATA = None

PYDICOM_FILES = Path(DATA_ROOT) / "test_files"
TRUNCATED = "emri_small_jpeg_2k_lossless_too_short.dcm"
IMAGE_SIZE = 256
MIN_PEARSON_R = 0.999


def label(path: Path) -> str:
    if PYDICOM_DATA is not None and path.is_relative_to(PYDICOM_DATA):
        return f"pydicom-data/{path.relative_to(PYDICOM_DATA)}"
    return f"pydicom/{path.relative_to(PYDICOM_FILES)}"


def census() -> tuple[list, list, dict[str, list[str]]]:
    """pytest params for every file holding pixel data: grey single-frame images to check, and colour or multi-frame
    files (with what makes them so) that preprocessing must refuse; and the names of the files that are no image (not
    DICOM without force=True, no Pixel Data)."""
    files = sorted(path for path in PYDICOM_FILES.rglob("*") if path.is_file() and path.suffix != ".py")
    if PYDICOM_DATA is not None:
        files += sorted(PYDICOM_DATA.glob("*.dcm"))
    params, refused, not_images = [], [], {"not DICOM (pydicom needs force=True)": [], "no Pixel Data": []}
    for path in files:
        with warnings.catch_warnings():  # damaged headers (badVR.dcm) warn when read and when their values are
            warnings.simplefilter("ignore")
            try:
                ds = pydicom.dcmread(path, defer_size="1 KB")
            except Exception:
                not_images["not DICOM (pydicom needs force=True)"].append(label(path))
                continue
            if "PixelData" not in ds:
                not_images["no Pixel Data"].append(label(path))
                continue
            photometric = str(ds.get("PhotometricInterpretation", "")).strip()
            samples = int(ds.get("SamplesPerPixel", 1))
            frames = str(ds.get("NumberOfFrames", 1) or 1)
        if photometric not in ("MONOCHROME1", "MONOCHROME2") or samples != 1:
            refused.append(pytest.param(path, "colour", id=label(path)))
        elif frames.isdigit() and int(frames) > 1:
            refused.append(pytest.param(path, "multi-frame", id=label(path)))
        else:
            params.append(pytest.param(path, id=label(path)))
    return params, refused, not_images


IMAGE_PARAMS, REFUSED_PARAMS, NOT_IMAGES = census()


def test_the_real_files_are_installed():
    """The checks below must not pass by finding nothing: pydicom 3.0.2 and pydicom-data 1.0.0 ship these."""
    assert PYDICOM_DATA is not None, "pydicom-data is not installed: pip install -e '.[test]' (pydicom-data==1.0.0)"
    names = {Path(param.values[0]).name for param in IMAGE_PARAMS}
    assert {"mlut_18.dcm", "vlut_04.dcm", "RG1_J2KR.dcm", "RG3_UNCR.dcm", "CT_small.dcm"} <= names
    # 161 files with pixel data: 80 single-frame grey (23 from pydicom-data), 70 colour, 11 multi-frame
    assert len(IMAGE_PARAMS) == 80
    kinds = [param.values[1] for param in REFUSED_PARAMS]
    assert (kinds.count("colour"), kinds.count("multi-frame")) == (70, 11)
    assert len(NOT_IMAGES["no Pixel Data"]) == 69 and len(NOT_IMAGES["not DICOM (pydicom needs force=True)"]) == 14


def pydicom_chain(ds: Dataset, stored: np.ndarray) -> np.ndarray:
    """pydicom's modality LUT then VOI (window or VOI LUT; none: the modality output as is), negated for
    MONOCHROME1 (Pearson's r ignores the scale and offset)."""
    values = apply_voi_lut(apply_modality_lut(stored, ds), ds).astype(np.float64)
    return -values if str(ds.PhotometricInterpretation).strip() == "MONOCHROME1" else values


@pytest.mark.parametrize("path", IMAGE_PARAMS)
def test_display_image_agrees_with_pydicom(path):
    ds = pydicom.dcmread(path)
    try:
        stored = ds.pixel_array
    except Exception:
        # No reference, so no guess either: leanmed must refuse the file (four here: JPEG-lossy, JPEG Extended; an
        # unreadable J2K header; MR_truncated, short pixel data; badVR, Number of Frames "1A").
        with pytest.raises(dicom_decode.DicomError) as refusal:
            dicom.preprocess(path, image_size=64)
        assert Path(refusal.value.path) == path and refusal.value.reason
        return
    if ds.file_meta.TransferSyntaxUID not in dicom_decode.SUPPORTED_SYNTAXES or int(ds.BitsAllocated) not in (8, 16):
        # JPEG Extended (.51), 1-bit and 32-bit images: no mammography system writes them; leanmed refuses them
        # with the reason rather than guessing (here: JPGExtended, liver_1frame, rtdose_*_1frame).
        with pytest.raises(dicom_decode.DicomError, match="unsupported"):
            dicom_decode.read_dicom(path)
        return
    reference = pydicom_chain(ds, stored)
    ours, _ = dicom_display.display_image(dicom_decode.read_dicom(path), dtype=np.float32)
    assert ours.shape == reference.shape
    if reference.std() == 0:
        # dicomdirtests CT2/17166 and 17196: 16 x 16 images all above their window (centre 30, width 100), so both
        # chains give one value and r is undefined; leanmed must then be saturated too.
        assert ours.std() == 0 and float(ours.flat[0]) in (0.0, 1.0)
        return
    r = float(np.corrcoef(ours.ravel().astype(np.float64), reference.ravel())[0, 1])
    assert r >= MIN_PEARSON_R, f"{label(path)}: r = {r:.6f} against pydicom's modality LUT + VOI chain"


@pytest.mark.parametrize("path, kind", REFUSED_PARAMS)
def test_colour_and_multi_frame_files_are_refused_naming_the_file(path, kind):
    """A colour or multi-frame file is no mammogram: refused, not turned into a training image from one channel or
    the first frame (a multi-frame file was, until 2026-11-29). One that leanmed cannot even decode (a transfer
    syntax or Bits Allocated it does not read, damaged pixel data) is refused for that, before."""
    with pytest.raises(dicom_decode.DicomError) as refusal:
        dicom.preprocess(path, image_size=64)
    assert Path(refusal.value.path) == path
    try:
        dicom_decode.read_dicom(path)
    except dicom_decode.DicomError as decode_refusal:
        assert refusal.value.reason == decode_refusal.reason
        return
    expected = {"colour": "not a grey image", "multi-frame": "multi-frame image"}[kind]
    assert refusal.value.reason.startswith(expected), refusal.value.reason


# ------------------------------------------------------------------------------------------------------------
# mlut_18.dcm: signed, 12 of 16 bits, words not sign-extended, Modality LUT Sequence, no window
# ------------------------------------------------------------------------------------------------------------


def stored_values(words: np.ndarray, bits_stored: int, signed: bool) -> np.ndarray:
    """Masked to Bits Stored and sign-extended, independently of leanmed."""
    values = words.astype(np.int64) & ((1 << bits_stored) - 1)
    if signed:
        values = np.where(values >= 1 << (bits_stored - 1), values - (1 << bits_stored), values)
    return values


def pydicom_data_file(name: str) -> Path:
    assert PYDICOM_DATA is not None, "pydicom-data is not installed (a test extra)"
    return PYDICOM_DATA / name


def test_mlut_18_display_range_is_that_of_the_stored_values():
    path = pydicom_data_file("mlut_18.dcm")
    decoded = dicom_decode.read_dicom(path)
    ds = decoded.dataset
    assert (ds.BitsAllocated, ds.BitsStored, ds.PixelRepresentation) == (16, 12, 1)
    assert "ModalityLUTSequence" in ds and "WindowCenter" not in ds and "VOILUTSequence" not in ds
    assert decoded.pixels.max() > 2047  # raw words: some are not sign-extended
    values = stored_values(decoded.pixels, 12, signed=True)
    assert dicom_display.stored_range(ds, decoded.pixels) == (values.min(), values.max())
    _, info = dicom.preprocess(path, image_size=64)
    assert info["voi"] == dicom_display.display_image(decoded)[1]  # preprocess scales over the same range


# ------------------------------------------------------------------------------------------------------------
# NEMA pairs: lossless JPEG 2000 (_J2KR) against the uncompressed copy (_UNCR)
# ------------------------------------------------------------------------------------------------------------


def nema_pairs() -> list:
    if PYDICOM_DATA is None:
        return []
    params = []
    for j2kr in sorted(PYDICOM_DATA.glob("*_J2KR.dcm")):
        uncr = j2kr.with_name(j2kr.name.replace("_J2KR", "_UNCR"))
        if not uncr.exists():
            continue
        photometric = str(pydicom.dcmread(uncr, stop_before_pixels=True).PhotometricInterpretation)
        marks = () if photometric.startswith("MONOCHROME") else pytest.mark.skip(reason=f"colour ({photometric})")
        params.append(pytest.param(j2kr, uncr, id=j2kr.name.replace("_J2KR.dcm", ""), marks=marks))
    return params


NEMA_PAIRS = nema_pairs()


def test_nema_pairs_are_installed():
    assert [param.id for param in NEMA_PAIRS] == ["693", "MR2", "RG1", "RG3", "US1"]


def png_bytes(tmp_path: Path, path: Path, **options) -> tuple[bytes, np.ndarray, dict]:
    image, info = dicom.preprocess(path, image_size=IMAGE_SIZE, **options)
    target = tmp_path / f"{path.stem}-{len(list(tmp_path.iterdir()))}.png"
    dicom.write_png(image, target)
    return target.read_bytes(), image, info


@pytest.mark.parametrize("j2kr, uncr", NEMA_PAIRS)
def test_lossless_and_uncompressed_copies_give_identical_pngs(tmp_path, monkeypatch, j2kr, uncr):
    reference, exact, _ = png_bytes(tmp_path, uncr, path_mode="exact")
    region, _, region_info = png_bytes(tmp_path, j2kr, path_mode="exact")  # breast-box decode where it applies
    assert region == reference
    with monkeypatch.context() as patch:  # no libopenjp2: the whole image is decoded
        patch.setattr(dicom.openjpeg, "available", lambda: False)
        whole, _, whole_info = png_bytes(tmp_path, j2kr, path_mode="exact")
    assert whole_info["decode_area"] is None and whole_info["decoder"] == dicom_decode.DECODER_NAMES["jpeg2000"]
    assert whole == reference
    _, reduced, _ = png_bytes(tmp_path, j2kr, path_mode="reduced")
    assert np.abs(reduced.astype(np.float64) - exact).mean() <= 1.0


@pytest.mark.skipif(not dicom.openjpeg.available(), reason=dicom.openjpeg.library_description())
def test_a_nema_pair_goes_through_the_region_decode():
    """The comparison above must reach the decode area: RG1 (1955 x 1841, windowed) does. Its body fills the
    detector, so its box is the whole image; the smaller pairs are decoded whole (MR2's edges reach the coarse
    area's border, 693 is under the coarse side)."""
    _, info = dicom.preprocess(pydicom_data_file("RG1_J2KR.dcm"), image_size=IMAGE_SIZE, path_mode="exact")
    assert info["decoder"] == dicom_decode.DECODER_NAMES["jpeg2000_region"] and info["decode_area"] is not None


# ------------------------------------------------------------------------------------------------------------
# The truncated JPEG 2000 file
# ------------------------------------------------------------------------------------------------------------


def test_truncated_real_file_is_refused_with_its_name():
    path = pydicom_data_file(TRUNCATED)
    for attempt in (dicom_decode.read_dicom, dicom.preprocess):
        with pytest.raises(dicom_decode.DicomError) as caught:
            attempt(path)
        assert caught.value.path == str(path) and str(path) in str(caught.value)
        assert "truncated" in caught.value.reason


def test_shard_conversion_excludes_the_truncated_file_and_converts_the_rest(tmp_path):
    rows = [
        {"patient_id": "1", "image_id": "11", "subject_id": "1", "label": 0, "dicom_path": TRUNCATED},
        {"patient_id": "2", "image_id": "22", "subject_id": "2", "label": 1, "dicom_path": "MR2_UNCR.dcm"},
    ]
    cohort_csv = tmp_path / "cohort.csv"
    pd.DataFrame(rows).to_csv(cohort_csv, index=False)
    out_root = tmp_path / "rsna" / "png"
    manifest = convert.convert_shard(cohort_csv, pydicom_data_file(""), out_root, 0, 1, 32).set_index("image_id")
    assert list(manifest["status"]) == ["excluded", "ok"]
    reason = manifest.loc["11", "reason"]
    assert str(pydicom_data_file(TRUNCATED)) in reason and "truncated" in reason
    assert manifest.loc["11", "path"] == ""
    with Image.open(out_root.parent / manifest.loc["22", "path"]) as png:
        assert png.size == (32, 32)


# ------------------------------------------------------------------------------------------------------------
# Crafted: bits above Bits Stored
# ------------------------------------------------------------------------------------------------------------


def crafted_file(path: Path, words: np.ndarray, bits_stored: int = 12) -> Path:
    """A native single-frame MONOCHROME2 file holding `words` (uint16 or int16) as they are, no window."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.2"
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "MG"
    ds.Rows, ds.Columns = words.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, bits_stored, bits_stored - 1
    ds.PixelRepresentation = 1 if words.dtype.kind == "i" else 0
    ds.PixelData = words.astype("<" + words.dtype.str[1:]).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def breast_like(low: int, high: int, seed: int = 0) -> np.ndarray:
    """A bright half-ellipse against the left edge (low..high) on a dark background at `low`."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:160, 0:120].astype(np.float64)
    radius = ((yy - 80) / 66) ** 2 + (xx / 80) ** 2
    values = np.where(radius < 1, high - (high - low) * 0.6 * radius + rng.normal(0, 8, radius.shape), low)
    return np.clip(np.rint(values), low, high).astype(np.int64)


@pytest.mark.parametrize("signed", [True, False], ids=["signed", "unsigned"])
def test_bits_above_bits_stored_do_not_change_the_display(tmp_path, signed):
    rng = np.random.default_rng(1)
    values = breast_like(-1500, 1800) if signed else breast_like(100, 3900)
    clean = values.astype(np.int16 if signed else np.uint16)  # signed: sign-extended words, as DICOM asks
    low_bits = values.astype(np.int64) & 0x0FFF
    garbage = (low_bits | (rng.integers(0, 16, values.shape) << 12)).astype(np.uint16)  # random high nibble
    overlay = low_bits.copy()
    overlay[20:60, 10:110] |= 1 << 15  # an overlay plane in bit 15
    variants = {"garbage": garbage, "overlay": overlay.astype(np.uint16)}
    if signed:
        variants["not sign-extended"] = low_bits.astype(np.uint16)  # as in mlut_18.dcm
    clean_path = crafted_file(tmp_path / "clean.dcm", clean)
    clean_display, clean_voi = dicom_display.display_image(dicom_decode.read_dicom(clean_path))
    clean_image, _ = dicom.preprocess(clean_path, image_size=64, bits=16)
    assert clean_voi["voi"] == "min_max" and clean_display.min() == 0 and clean_display.max() == dicom_display.LUT_MAX
    for name, words in variants.items():
        stored_words = words.view(np.int16) if signed else words
        path = crafted_file(tmp_path / f"{name.replace(' ', '_')}.dcm", stored_words)
        decoded = dicom_decode.read_dicom(path)
        raw = (int(decoded.pixels.min()), int(decoded.pixels.max()))
        assert raw != (values.min(), values.max()), name  # the raw words alone would give another range
        assert dicom_display.stored_range(decoded.dataset, decoded.pixels) == (values.min(), values.max()), name
        display, voi = dicom_display.display_image(decoded)
        assert voi == clean_voi, name
        np.testing.assert_array_equal(display, clean_display, err_msg=name)
        image, _ = dicom.preprocess(path, image_size=64, bits=16)
        np.testing.assert_array_equal(image, clean_image, err_msg=name)


def test_incomplete_number_of_frames_is_a_dicom_error(tmp_path):
    """pydicom's badVR.dcm has Number of Frames "1A" (refused there for its 32 bits); on a 16-bit file it would
    have raised a bare ValueError."""
    path = crafted_file(tmp_path / "frames.dcm", breast_like(100, 3900).astype(np.uint16))
    ds = pydicom.dcmread(path)
    ds.NumberOfFrames = "11"
    ds.save_as(path)
    element = b"\x28\x00\x08\x00IS\x02\x00"  # (0028,0008) IS, 2 bytes, explicit VR little endian
    data = path.read_bytes()
    assert data.count(element + b"11") == 1
    path.write_bytes(data.replace(element + b"11", element + b"1A"))
    with pytest.raises(dicom_decode.DicomError, match="incomplete image pixel module"):
        dicom_decode.read_dicom(path)
