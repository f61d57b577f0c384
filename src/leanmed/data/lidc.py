"""LIDC-IDRI lung patches from the Probabilistic U-Net pickle: read, validate, label by number of raters, write PNGs.

The pickle (Kohl et al. 2018 / the Probabilistic U-Net PyTorch port, `data_lidc.pickle`) is one dict:

    "<patient>_<rest>" -> {"image": float array HxW in [0, 1], "masks": 4 uint8 HxW masks, "series_uid": str}

with H = W = 128 and one mask per radiologist (0 = no tumour at that pixel, > 0 = marked). Files over 2 GB were
written in chunks of 2**31 - 1 bytes, back to back, so the file is one ordinary pickle stream.

Labelling: a patch is tumour (label 1) when at least `min_raters` of its raters marked any pixel. The paper's text
says "at least 2 raters" (`min_raters=2`, leanmed's default); the authors' code (github.com/raghavian/redl,
`data/datasets.py`) uses `targets.sum(1) > 2`, i.e. at least 3 raters (`min_raters=3`).

Each PNG records its fingerprint (a tEXt chunk, `leanmed.data.png`; also in labels.csv): image_size, the code
(`leanmed.fingerprint.code_version("lidc_labels")`) and the patch's own content in the pickle. A PNG whose recorded
fingerprint is the current one is kept untouched; any other is rewritten. Labelling options (min_raters) are not
part of it: they change labels.csv only.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from leanmed.atomic import write_text_atomically
from leanmed.data.png import is_current_png, write_png
from leanmed.data.stale_files import remove_stale_pngs
from leanmed.fingerprint import code_version, value_version

log = logging.getLogger(__name__)

# Largest single read: macOS cannot read() 2 GiB or more in one call, hence the original writer's chunk size.
MAX_READ_BYTES = 2**31 - 1

PATCH_SHAPE: tuple[int, int] = (128, 128)
N_RATERS = 4

LABELS_CSV_COLUMNS: tuple[str, ...] = ("image_id", "subject_id", "n_raters", "label", "path", "fingerprint")

# Float rounding in the writer's normalisation may overshoot [0, 1] by a few ulps; that is not a format error
# (patch_to_uint8 clips), anything larger is.
_RANGE_TOLERANCE = 1e-6

# File names keep only these characters; anything else in a key is replaced (see `safe_file_stem`).
_UNSAFE_FILE_CHARACTERS = re.compile(r"[^A-Za-z0-9._-]")
# Leaves room for the hash suffix and ".png" within the common 255-byte file-name limit.
_MAX_STEM_LENGTH = 180


class LidcError(ValueError):
    """The LIDC pickle is unreadable or not in the expected structure; the message names the file, the key and
    what was expected."""


def read_file_in_chunks(path: str | os.PathLike, chunk_bytes: int | None = None) -> bytearray:
    """The whole content of `path`, read in pieces of at most `chunk_bytes` (default `MAX_READ_BYTES`) into one
    preallocated bytearray, so that files over 2 GiB load on systems whose read() stops at 2 GiB."""
    chunk = MAX_READ_BYTES if chunk_bytes is None else int(chunk_bytes)
    if chunk < 1:
        raise ValueError(f"chunk_bytes must be at least 1, got {chunk_bytes}")
    size = os.path.getsize(path)
    buffer = bytearray(size)
    position = 0
    with open(path, "rb") as handle, memoryview(buffer) as view:
        while position < size:
            count = handle.readinto(view[position : position + chunk])
            if not count:
                raise LidcError(f"{path}: file ended after {position} of {size} bytes while reading")
            position += count
    return buffer


def _fail(path: Path, key: object, problem: str) -> LidcError:
    return LidcError(f"{path}: key {key!r}: {problem}")


def _as_array(path: Path, key: object, name: str, value: object) -> np.ndarray:
    try:
        array = np.asarray(value)
    except Exception as error:  # numpy raises several types for ragged or odd objects
        raise _fail(path, key, f"{name!r} cannot be read as an array ({error})") from error
    if array.dtype == object or not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
        raise _fail(path, key, f"{name!r} must be a numeric array, got dtype {array.dtype}")
    return array


def validate_patch(
    path: str | os.PathLike,
    key: object,
    entry: object,
    expected_shape: tuple[int, int] | None = PATCH_SHAPE,
    n_raters: int = N_RATERS,
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Check one pickle entry and return (image, masks).

    Expected: `key` a text "<patient>_<rest>" with a non-empty patient; `entry` a dict with "image" (2-D,
    finite, values in [0, 1] give or take 1e-6, shape `expected_shape` unless None) and "masks" (a list or array
    of `n_raters` masks, each the image's shape, finite, no negative values). Raises `LidcError` naming the file,
    the key and what was expected.
    """
    path = Path(path)
    if not isinstance(key, str):
        raise _fail(path, key, f"keys must be text '<patient>_<rest>', got {type(key).__name__}")
    patient, separator, _ = key.partition("_")
    if not separator or not patient:
        raise _fail(path, key, "keys must look like '<patient>_<rest>' (patient id before the first '_')")
    if not isinstance(entry, Mapping):
        raise _fail(path, key, f"expected a dict with 'image' and 'masks', got {type(entry).__name__}")
    for name in ("image", "masks"):
        if name not in entry:
            raise _fail(path, key, f"missing {name!r}; the entry has {sorted(map(str, entry))}")

    image = _as_array(path, key, "image", entry["image"])
    if image.ndim != 2:
        raise _fail(path, key, f"'image' must be 2-D, got shape {image.shape}")
    if expected_shape is not None and image.shape != tuple(expected_shape):
        raise _fail(path, key, f"'image' must have shape {tuple(expected_shape)}, got {image.shape}")
    if not np.all(np.isfinite(image)):
        raise _fail(path, key, "'image' contains NaN or infinite values")
    low, high = float(image.min()), float(image.max())
    if low < -_RANGE_TOLERANCE or high > 1.0 + _RANGE_TOLERANCE:
        raise _fail(path, key, f"'image' values must lie in [0, 1], got min {low:g}, max {high:g}")

    raw_masks = entry["masks"]
    if isinstance(raw_masks, (str, bytes, Mapping)) or not hasattr(raw_masks, "__len__"):
        raise _fail(path, key, f"'masks' must be a list of {n_raters} arrays, got {type(raw_masks).__name__}")
    if len(raw_masks) != n_raters:
        raise _fail(path, key, f"'masks' must hold {n_raters} masks (one per rater), got {len(raw_masks)}")
    masks: list[np.ndarray] = []
    for rater, raw_mask in enumerate(raw_masks):
        mask = _as_array(path, key, f"masks[{rater}]", raw_mask)
        if mask.shape != image.shape:
            raise _fail(path, key, f"'masks[{rater}]' must have the image's shape {image.shape}, got {mask.shape}")
        if not np.all(np.isfinite(mask)):
            raise _fail(path, key, f"'masks[{rater}]' contains NaN or infinite values")
        if mask.size and float(mask.min()) < 0:
            raise _fail(path, key, f"'masks[{rater}]' must not be negative, got min {float(mask.min()):g}")
        masks.append(mask)
    return image, masks


def load_pickle(
    path: str | os.PathLike,
    validate: bool = True,
    expected_shape: tuple[int, int] | None = PATCH_SHAPE,
    n_raters: int = N_RATERS,
) -> dict[str, dict]:
    """Load the LIDC pickle at `path` (read in chunks of `MAX_READ_BYTES`, see `read_file_in_chunks`).

    With `validate`, every entry is checked by `validate_patch` and the first bad one raises `LidcError`.
    The pickle format runs code while loading: only load files from a source you trust.
    """
    path = Path(path)
    payload = read_file_in_chunks(path)
    try:
        data = pickle.loads(payload)
    except Exception as error:  # unpickling raises many error types for corrupt or truncated files
        raise LidcError(f"{path}: not a readable pickle ({type(error).__name__}: {error})") from error
    del payload
    if not isinstance(data, dict):
        raise LidcError(f"{path}: expected a dict '<patient>_<rest>' -> patch, got {type(data).__name__}")
    if not data:
        raise LidcError(f"{path}: the pickle holds no patches")
    if validate:
        for key, entry in data.items():
            validate_patch(path, key, entry, expected_shape, n_raters)
    return data


def count_raters(masks: list[np.ndarray]) -> int:
    """Number of raters who marked at least one pixel (mask value > 0) as tumour."""
    return int(sum(bool(np.any(mask > 0)) for mask in masks))


def subject_of(key: str) -> str:
    """Patient id of a pickle key: the text before the first "_"."""
    return key.split("_", 1)[0]


def safe_file_stem(key: str) -> str:
    """A file name stem for `key` that is safe on common file systems and unique per key.

    Keys made only of letters, digits, ".", "_" and "-" (not starting with ".") are used as they are; any other
    key has its unsafe characters replaced by "_", is shortened to at most 180 characters and gets "-" plus the
    first 10 hex digits of the key's SHA-1 appended, so that two keys differing only in unsafe characters do not
    collide.
    """
    if key and _UNSAFE_FILE_CHARACTERS.search(key) is None and not key.startswith(".") and len(key) <= _MAX_STEM_LENGTH:
        return key
    cleaned = _UNSAFE_FILE_CHARACTERS.sub("_", key).lstrip(".")[:_MAX_STEM_LENGTH] or "patch"
    digest = hashlib.sha1(key.encode("utf-8")).hexdigest()[:10]
    return f"{cleaned}-{digest}"


def patch_to_uint8(image: np.ndarray, image_size: int) -> np.ndarray:
    """The [0, 1] float patch as an 8-bit grey image of `image_size` x `image_size` pixels.

    Resized with PIL's bicubic filter on the float values (PIL widens the filter when shrinking, so downsizing
    is antialiased), then clipped to [0, 1] (bicubic overshoots at edges) and mapped to 0-255 by rounding.
    """
    values = np.asarray(image, dtype=np.float32)
    if values.shape != (image_size, image_size):
        # float32 arrays become PIL mode "F", so the filter works on the unquantised values.
        resized = Image.fromarray(values).resize((image_size, image_size), Image.Resampling.BICUBIC)
        values = np.asarray(resized, dtype=np.float32)
    return np.rint(np.clip(values, 0.0, 1.0) * 255.0).astype(np.uint8)


def patch_fingerprint(image: np.ndarray, image_size: int, code: str) -> str:
    """Fingerprint (16 hex digits) of a patch's PNG: `image_size`, the code version and the patch as stored in the
    pickle (dtype, shape and bytes), so that a changed patch, size or code rewrites it and nothing else does."""
    values = np.ascontiguousarray(image)
    content = hashlib.sha256(f"{values.dtype.str}{values.shape}".encode())
    content.update(values.tobytes())
    return value_version({"image_size": int(image_size), "code": str(code), "patch": content.hexdigest()})


def png_is_current(path: str | os.PathLike, image_size: int, fingerprint: str) -> bool:
    """True when `path` is a complete 8-bit grey PNG of `image_size` x `image_size` recording `fingerprint`."""
    return is_current_png(path, image_size, "L", fingerprint)


def label_patches(
    pickle_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    image_size: int = 256,
    min_raters: int = 2,
    code: str | None = None,
) -> pd.DataFrame:
    """Label every patch of the LIDC pickle and write its PNG and `labels.csv`.

    - label 1 when at least `min_raters` raters (1..4) marked any tumour pixel, else 0 (paper text: 2; paper
      code: 3; see the module docstring);
    - PNG: 8-bit grey, `image_size` x `image_size` pixels (`patch_to_uint8`), at
      `<out_dir>/png/<safe_file_stem(key)>.png`, written atomically, recording its `patch_fingerprint` (with
      `code`, default `code_version("lidc_labels")`); a PNG already there with the same fingerprint is kept
      untouched (same bytes and mtime), any other is rewritten; PNGs there of keys no longer in the pickle are
      deleted (`leanmed.data.stale_files.remove_stale_pngs`);
    - `<out_dir>/labels.csv` (atomic), one row per patch sorted by key, columns image_id (the pickle key),
      subject_id (patient: key text before the first "_"), n_raters (0-4), label (0/1), path (relative to
      `out_dir`), fingerprint (the PNG's).

    Returns the labels frame.
    """
    if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) or image_size < 1:
        raise ValueError(f"image_size must be a positive integer (pixels), got {image_size!r}")
    if isinstance(min_raters, bool) or not isinstance(min_raters, (int, np.integer)) or not 1 <= min_raters <= N_RATERS:
        raise ValueError(f"min_raters must be an integer from 1 to {N_RATERS}, got {min_raters!r}")
    out = Path(out_dir)
    code = code_version("lidc_labels") if code is None else str(code)
    data = load_pickle(pickle_path)
    stems: dict[str, str] = {}
    for key in sorted(data):
        stem = safe_file_stem(key)
        if stem in stems:
            raise LidcError(f"{pickle_path}: keys {stems[stem]!r} and {key!r} map to the same file name {stem!r}")
        stems[stem] = key

    rows = []
    for key in sorted(data):
        # load_pickle has validated every entry, so no PNG is written for a pickle with a bad entry.
        entry = data[key]
        image = np.asarray(entry["image"])
        n_raters = count_raters([np.asarray(mask) for mask in entry["masks"]])
        relative = f"png/{safe_file_stem(key)}.png"
        fingerprint = patch_fingerprint(image, int(image_size), code)
        if not png_is_current(out / relative, int(image_size), fingerprint):
            write_png(patch_to_uint8(image, int(image_size)), out / relative, fingerprint)
        rows.append(
            {
                "image_id": key,
                "subject_id": subject_of(key),
                "n_raters": n_raters,
                "label": int(n_raters >= min_raters),
                "path": relative,
                "fingerprint": fingerprint,
            }
        )
    labels = pd.DataFrame(rows, columns=list(LABELS_CSV_COLUMNS))
    write_text_atomically(out / "labels.csv", labels.to_csv(index=False))
    stale = remove_stale_pngs(out / "png", [out / row["path"] for row in rows])
    if stale:
        log.info("removed %d PNGs of patches no longer in %s (e.g. %s)", len(stale), pickle_path, stale[0].name)
    return labels
