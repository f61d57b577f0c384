"""Images listed in ``split.csv`` as float tensors, with the paper's downsampling by a scale S, and seeded loaders.

``split.csv`` (see docs/architecture.md) has one row per image: ``image_id, subject_id, label, path, split``; ``path``
is relative to the directory holding ``split.csv``. Images are grey PNGs, 8-bit (divided by 255) or 16-bit (divided
by 65535), returned as float32 tensors of shape 1 x H x W with values in [0, 1].

Downsampling by S (1, 2, 4 or 8) averages each S x S block (average pooling). Two ways to feed the result to a model:

- ``"smaller_input"``: the pooled H/S x W/S image is the model input (what the paper's code did);
- ``"pooled_upsampled"``: the pooled image is upsampled back to H x W by repeating each value S x S times (nearest
  neighbour), so the model and its input size stay the same and only the information content drops.

Both keep the image mean (up to float rounding). Decoded images are cached in memory ("preloaded") when the split
fits ``preload_max_bytes``: each PNG is then decoded once, at construction, and an item costs a copy, a division and
the pooling.
"""

from __future__ import annotations

import csv
import hashlib
import random
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, SequentialSampler

from leanmed.fingerprint import file_sha256
from leanmed.study import NOT_DOWNSAMPLED

__all__ = [
    "SCALES",
    "DOWNSAMPLE_MODES",
    "NOT_DOWNSAMPLED",
    "ImageDataset",
    "read_split_rows",
    "read_grey_png",
    "resize_grey",
    "to_unit_float",
    "downsample",
    "input_size_for",
    "make_loader",
    "reseed_shuffle",
    "seed_worker",
    "png_image_sha256",
    "split_fingerprint",
]

SCALES = (1, 2, 4, 8)
DOWNSAMPLE_MODES = ("pooled_upsampled", "smaller_input")
SPLITS = ("train", "val", "test")
REQUIRED_COLUMNS = ("image_id", "subject_id", "label", "path", "split")
DEFAULT_PRELOAD_MAX_BYTES = 2 * 1024**3

# Largest value of each stored integer type: the divisor that maps it to [0, 1].
_FULL_SCALE = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}


def read_split_rows(split_csv: str | Path, split: str | None = None) -> list[dict[str, str]]:
    """Rows of ``split.csv`` (all, or those of one split) as dicts of strings, in file order."""
    split_csv = Path(split_csv)
    with split_csv.open(newline="") as handle:
        reader = csv.DictReader(handle)
        missing = [column for column in REQUIRED_COLUMNS if column not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{split_csv}: missing column(s) {missing}; expected {list(REQUIRED_COLUMNS)}")
        rows = list(reader)
    if split is not None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        rows = [row for row in rows if row["split"] == split]
    return rows


def binary_labels(split_csv: Path, rows: list[dict[str, str]]) -> list[int]:
    """The ``label`` column of ``rows`` as 0/1; ValueError naming the file, the image and the value otherwise (an
    empty cell, NaN, 2, "yes")."""
    labels = []
    for row in rows:
        value = (row.get("label") or "").strip()
        if value not in ("0", "1"):
            raise ValueError(f"{split_csv}: column 'label' must be 0 or 1, got {value!r} for image "
                             f"{row.get('image_id')!r}")
        labels.append(int(value))
    return labels


def read_grey_png(path: str | Path) -> np.ndarray:
    """Decode a grey PNG to a 2-D array: uint8 for 8-bit images, uint16 for 16-bit ones.

    Raises ValueError naming the file for unreadable (truncated, corrupt) files and for colour, palette or alpha
    images: the data contract is single-channel grey.
    """
    try:
        image = Image.open(path)
    except (OSError, SyntaxError, ValueError) as error:  # Pillow: missing, not a PNG, corrupt chunks (SyntaxError)
        raise ValueError(f"{path}: unreadable PNG ({type(error).__name__}: {error})") from None
    with image:
        try:
            image.load()
        except (OSError, SyntaxError, ValueError) as error:  # truncated data (OSError)
            raise ValueError(f"{path}: unreadable PNG ({type(error).__name__}: {error})") from None
        mode = image.mode
        if mode == "L":
            return np.asarray(image, dtype=np.uint8).copy()
        if mode.startswith("I;16"):
            return np.asarray(image).astype(np.uint16)
        if mode == "I":
            # Some Pillow versions open 16-bit grey PNGs as 32-bit integer mode "I".
            values = np.asarray(image)
            if values.size and (values.min() < 0 or values.max() > 65535):
                raise ValueError(f"{path}: 32-bit grey values outside the 16-bit range")
            return values.astype(np.uint16)
        if mode == "1":
            return (np.asarray(image, dtype=np.uint8) * 255).astype(np.uint8)
    raise ValueError(f"{path}: expected a grey PNG (mode L or I;16), got mode {mode!r}")


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Chunks that say something about an image, not what it shows: its text (where a converted image records the
# fingerprint of how it was made: the code version and the source file's mtime) and its time stamp.
_PNG_METADATA_CHUNKS = frozenset({b"tEXt", b"zTXt", b"iTXt", b"tIME"})


def png_image_sha256(data: bytes) -> bytes:
    """sha256 over a PNG's chunks but its text and time stamp (``_PNG_METADATA_CHUNKS``): its header, palette and
    compressed pixels, what a training job reads of it. A PNG made again with the same pixels (after its source
    DICOM was touched or copied without its mtime, or after an edit of the conversion code that changed no pixel)
    differs in its recorded fingerprint only and gives the same hash. Bytes that are not a PNG are hashed whole."""
    if not data.startswith(_PNG_SIGNATURE):
        return hashlib.sha256(data).digest()
    digest = hashlib.sha256(_PNG_SIGNATURE)
    position = len(_PNG_SIGNATURE)
    while position < len(data):
        length = int.from_bytes(data[position : position + 4], "big")
        end = position + 12 + length  # length, type, data, CRC
        if data[position + 4 : position + 8] not in _PNG_METADATA_CHUNKS:
            digest.update(data[position:end])
        position = end
    return digest.digest()


def split_fingerprint(split_csv: str | Path) -> dict:
    """What a training job reads, by content: sha256 of ``split.csv``'s bytes and one sha256 over every image it lists
    (each row's ``path`` and the PNG's image, ``png_image_sha256``: its bytes but the recorded fingerprint of how it
    was made, in file order, all splits).

    A training checkpoint is resumed only when these match (leanmed.train.checkpoint): a rerun after a new split, new
    labels or images with other pixels trains from scratch; images made again with the same pixels resume. Hashing
    reads each PNG once more; for the paper's RSNA cohort (11,856 PNGs at 256 px, about 0.6 GB) that is about a
    second, small beside one epoch.
    """
    split_csv = Path(split_csv)
    split_digest = file_sha256(split_csv)
    images_digest = hashlib.sha256()
    rows = read_split_rows(split_csv)
    for row in rows:
        images_digest.update(row["path"].encode() + b"\0")
        images_digest.update(png_image_sha256((split_csv.parent / row["path"]).read_bytes()))
    return {
        "split_csv": str(split_csv),
        "split_csv_sha256": split_digest,
        "images_sha256": images_digest.hexdigest(),
        "n_images": len(rows),
    }


def resize_grey(array: np.ndarray, size: int) -> np.ndarray:
    """Resize a 2-D integer image to size x size (bilinear with antialiasing), rounded back to its integer type.

    Rounding keeps the bit depth of the source, so a resized image holds the values a PNG written at that size would.
    Returns the input unchanged when it already has that size.
    """
    if array.shape == (size, size):
        return array
    full_scale = _FULL_SCALE[array.dtype]
    tensor = torch.from_numpy(array.astype(np.float32))[None, None]
    resized = F.interpolate(tensor, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return resized[0, 0].round().clamp(0, full_scale).numpy().astype(array.dtype)


def to_unit_float(array: np.ndarray) -> torch.Tensor:
    """Integer image (H x W or N x H x W) -> float32 tensor in [0, 1] divided by the type's full scale."""
    if array.dtype == np.float32:
        return torch.from_numpy(array)
    # torch's integer -> float conversion and in-place division: one float32 buffer, no temporary copy
    return torch.from_numpy(array).to(torch.float32).div_(_FULL_SCALE[array.dtype])


def input_size_for(image_size: int, scale: int, downsample_mode: str) -> int:
    """Side length of the model input for images of ``image_size`` downsampled by ``scale`` in ``downsample_mode``."""
    _check_scale_and_mode(scale, downsample_mode)
    if image_size % scale:
        raise ValueError(f"image size {image_size} is not divisible by the scale {scale}")
    return image_size // scale if downsample_mode == "smaller_input" else image_size


def downsample(images: torch.Tensor, scale: int, downsample_mode: str) -> torch.Tensor:
    """Average-pool ``images`` (... x H x W, at least 3-D) by ``scale``; upsample back (nearest) for pooled_upsampled.

    Each output pixel of the pooling is the mean of an S x S block; "pooled_upsampled" repeats it over the block,
    so the mean of the image is unchanged and its size is H x W again.
    """
    _check_scale_and_mode(scale, downsample_mode)
    if scale == 1:
        return images
    height, width = images.shape[-2:]
    if height % scale or width % scale:
        raise ValueError(f"image of {height}x{width} is not divisible by the scale {scale}")
    pooled = F.avg_pool2d(images, kernel_size=scale, stride=scale)
    if downsample_mode == "smaller_input":
        return pooled
    # Nearest-neighbour upsampling by an integer factor: repeat each value over its S x S block (one copy; equal to
    # F.interpolate(mode="nearest") and faster).
    *leading, pooled_height, pooled_width = pooled.shape
    blocks = pooled[..., :, None, :, None].expand(*leading, pooled_height, scale, pooled_width, scale)
    return blocks.reshape(*leading, height, width)


def _check_scale_and_mode(scale: int, downsample_mode: str) -> None:
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
    if downsample_mode == NOT_DOWNSAMPLED and scale == 1:
        return
    if downsample_mode not in DOWNSAMPLE_MODES:
        allowed = DOWNSAMPLE_MODES + ((NOT_DOWNSAMPLED,) if scale == 1 else ())
        raise ValueError(f"downsample_mode must be one of {allowed} at scale {scale}, got {downsample_mode!r}")


class ImageDataset(Dataset):
    """The images of one split of ``split.csv``: item ``i`` is ``(image, label)``.

    ``image`` is a float32 tensor 1 x s x s in [0, 1] where s is ``input_size`` (``image_size``, or ``image_size / S``
    in "smaller_input" mode); ``label`` is a float32 scalar tensor (0. or 1.). Images whose size differs from
    ``image_size`` are resized first (see ``resize_grey``); with ``image_size=None`` every image must have the size of
    the first one. The order is the order of the rows in ``split.csv``; ``image_ids``, ``subject_ids`` and ``labels``
    follow it.

    ``preload``: True decodes every image once at construction and keeps the integer pixels in memory; False decodes
    on every access; "auto" preloads when the split takes at most ``preload_max_bytes`` (estimated from the first
    image).
    """

    def __init__(
        self,
        split_csv: str | Path,
        split: str,
        scale: int = 1,
        downsample_mode: str = "pooled_upsampled",
        image_size: int | None = None,
        preload: bool | str = "auto",
        preload_max_bytes: int = DEFAULT_PRELOAD_MAX_BYTES,
    ):
        _check_scale_and_mode(scale, downsample_mode)
        self.split_csv = Path(split_csv)
        self.split = split
        self.scale = int(scale)
        self.downsample_mode = downsample_mode
        rows = read_split_rows(self.split_csv, split)
        if not rows:
            raise ValueError(f"{self.split_csv}: no images in split {split!r}")
        root = self.split_csv.parent
        self.image_ids = [row["image_id"] for row in rows]
        self.subject_ids = [row["subject_id"] for row in rows]
        self.labels = np.array(binary_labels(self.split_csv, rows), dtype=np.int64)
        self.paths = [root / row["path"] for row in rows]
        self._label_tensors = torch.from_numpy(self.labels.astype(np.float32))

        first = read_grey_png(self.paths[0])
        if image_size is None:
            if first.shape[0] != first.shape[1]:
                raise ValueError(f"{self.paths[0]}: image is {first.shape}, not square; pass image_size to resize")
            image_size = int(first.shape[0])
        self.image_size = int(image_size)
        self.input_size = input_size_for(self.image_size, self.scale, self.downsample_mode)

        if preload == "auto":
            estimated_bytes = len(self.paths) * self.image_size**2 * first.dtype.itemsize
            preload = estimated_bytes <= preload_max_bytes
        self.preloaded = bool(preload)
        self._pixels: np.ndarray | None = None
        if self.preloaded:
            self._pixels = self._decode_all(first)

    def _decode(self, index: int) -> np.ndarray:
        array = read_grey_png(self.paths[index])
        return resize_grey(array, self.image_size)

    def _decode_all(self, first: np.ndarray) -> np.ndarray:
        first = resize_grey(first, self.image_size)
        pixels = np.empty((len(self.paths), self.image_size, self.image_size), dtype=first.dtype)
        pixels[0] = first
        for index in range(1, len(self.paths)):
            array = self._decode(index)
            if array.dtype != pixels.dtype:
                # Mixed bit depths: keep exact [0, 1] floats instead of one integer type.
                pixels = to_unit_float(pixels).numpy().copy() if pixels.dtype != np.float32 else pixels
                array = to_unit_float(array).numpy()
            pixels[index] = array
        return pixels

    def __len__(self) -> int:
        return len(self.paths)

    def _pixels_of(self, indices: Sequence[int]) -> np.ndarray:
        if self._pixels is not None:
            return self._pixels[np.asarray(indices, dtype=np.int64)]
        arrays = [self._decode(index) for index in indices]
        if len({array.dtype for array in arrays}) > 1:
            arrays = [to_unit_float(array).numpy() for array in arrays]
        return np.stack(arrays)

    def __getitem__(self, index):
        """``dataset[i]`` -> (image 1 x s x s, label); ``dataset[[i, j, ...]]`` -> (images N x 1 x s x s, labels N),
        converted and pooled as one tensor operation (what ``make_loader`` asks for, one batch per call)."""
        if isinstance(index, (int, np.integer)):
            images = self._images(self._pixels_of([int(index)]))
            return images[0], self._label_tensors[int(index)]
        indices = [int(i) for i in index]
        images = self._images(self._pixels_of(indices))
        return images, self._label_tensors[torch.as_tensor(indices, dtype=torch.long)]

    def _images(self, pixels: np.ndarray) -> torch.Tensor:
        """N x H x W stored pixels -> N x 1 x s x s float32 images after downsampling."""
        images = to_unit_float(np.ascontiguousarray(pixels)).unsqueeze(1)
        return downsample(images, self.scale, self.downsample_mode).contiguous()

    @property
    def nbytes_cached(self) -> int:
        """Bytes of decoded pixels held in memory (0 when not preloaded)."""
        return int(self._pixels.nbytes) if self._pixels is not None else 0

    def __repr__(self) -> str:
        return (
            f"ImageDataset({str(self.split_csv)!r}, split={self.split!r}, n={len(self)}, image_size={self.image_size},"
            f" input_size={self.input_size}, scale={self.scale}, mode={self.downsample_mode!r},"
            f" preloaded={self.preloaded})"
        )


def seed_worker(worker_id: int) -> None:
    """Seed numpy and ``random`` in a DataLoader worker from the torch seed the loader gave it.

    torch seeds each worker with base_seed + worker_id, the base seed drawn from the loader's generator, so worker
    randomness follows the loader's seed.
    """
    worker_seed = torch.initial_seed() % 2**32
    np.random.seed(worker_seed)
    random.seed(worker_seed)


def make_loader(
    dataset: Dataset,
    batch_size: int,
    shuffle: bool,
    seed: int,
    num_workers: int = 0,
    drop_last: bool = False,
    pin_memory: bool = False,
) -> DataLoader:
    """A DataLoader of (images, labels) batches whose order and worker seeds come from ``seed``.

    The order is drawn by a RandomSampler with its own torch.Generator (not the global RNG, and not the DataLoader's
    generator, which the DataLoader also draws worker seeds from a different number of times with and without
    persistent workers). ``reseed_shuffle(loader, s)`` before an epoch makes that epoch's order a function of ``s``
    alone, as the training loop does. Batches are fetched whole (``dataset[list_of_indices]``, see
    ImageDataset.__getitem__) rather than item by item and re-stacked, which keeps loading fast.
    """
    order = RandomSampler(dataset, generator=torch.Generator().manual_seed(int(seed))) if shuffle \
        else SequentialSampler(dataset)
    return DataLoader(
        dataset,
        sampler=BatchSampler(order, batch_size=batch_size, drop_last=drop_last),
        batch_size=None,  # the sampler yields whole batches of indices
        num_workers=num_workers,
        generator=torch.Generator().manual_seed(int(seed)),  # worker seeds only
        worker_init_fn=seed_worker,
        persistent_workers=num_workers > 0,
        pin_memory=pin_memory,
    )


def reseed_shuffle(loader: DataLoader, seed: int) -> None:
    """Reseed the order generator of a loader from ``make_loader`` (no-op for a loader that does not shuffle)."""
    order = getattr(loader.sampler, "sampler", None)
    if isinstance(order, RandomSampler):
        order.generator.manual_seed(int(seed))
