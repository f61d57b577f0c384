"""ImageDataset: decoding, resizing, the two downsampling modes, preloading, seeded loaders."""

import csv
import hashlib

import numpy as np
import pytest
import torch
from PIL import Image

from leanmed.data.images import (
    ImageDataset,
    downsample,
    input_size_for,
    make_loader,
    png_image_sha256,
    read_grey_png,
    reseed_shuffle,
)
from leanmed.data.png import write_png


def write_split(root, n=6, size=32, bit16=False, seed=0):
    """A split.csv with n train, 2 val, 2 test random grey PNGs (paths relative to split.csv's folder)."""
    rng = np.random.default_rng(seed)
    (root / "img").mkdir(parents=True, exist_ok=True)
    rows = []
    for index in range(n + 4):
        split = "train" if index < n else ("val" if index < n + 2 else "test")
        if bit16:
            pixels = rng.integers(0, 65536, (size, size), dtype=np.uint16)
        else:
            pixels = rng.integers(0, 256, (size, size), dtype=np.uint8)
        path = f"img/{index}.png"
        Image.fromarray(pixels).save(root / path)
        rows.append({"image_id": f"i{index}", "subject_id": f"s{index}", "label": index % 2, "path": path,
                     "split": split})
    with open(root / "split.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return root / "split.csv"


def test_8bit_png_becomes_unit_float(tmp_path):
    split_csv = write_split(tmp_path)
    dataset = ImageDataset(split_csv, "train")
    image, label = dataset[1]
    raw = np.asarray(Image.open(tmp_path / "img/1.png"), dtype=np.float32) / 255.0
    assert image.dtype == torch.float32 and image.shape == (1, 32, 32)
    assert torch.allclose(image[0], torch.from_numpy(raw))
    assert label.dtype == torch.float32 and float(label) == 1.0
    assert len(dataset) == 6 and dataset.image_ids[0] == "i0" and dataset.subject_ids[2] == "s2"


def test_16bit_png_is_read_at_full_depth(tmp_path):
    split_csv = write_split(tmp_path, bit16=True)
    pixels = read_grey_png(tmp_path / "img/0.png")
    assert pixels.dtype == np.uint16 and pixels.max() > 255
    image, _ = ImageDataset(split_csv, "train")[0]
    assert torch.allclose(image[0], torch.from_numpy(pixels.astype(np.float32) / 65535.0))
    assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0


def test_colour_png_is_rejected(tmp_path):
    Image.fromarray(np.zeros((4, 4, 3), dtype=np.uint8)).save(tmp_path / "rgb.png")
    with pytest.raises(ValueError, match="grey"):
        read_grey_png(tmp_path / "rgb.png")


@pytest.mark.parametrize("label", ["", "nan", "2", "yes"])
def test_a_label_that_is_not_0_or_1_is_named_with_the_file_and_the_image(tmp_path, label):
    split_csv = write_split(tmp_path)
    text = split_csv.read_text().splitlines()
    fields = text[1].split(",")
    fields[2] = label  # image i0, a train image
    split_csv.write_text("\n".join([text[0], ",".join(fields), *text[2:]]) + "\n")
    with pytest.raises(ValueError) as error:
        ImageDataset(split_csv, "train")
    assert str(error.value) == f"{split_csv}: column 'label' must be 0 or 1, got {label!r} for image 'i0'"


def test_a_truncated_png_is_named(tmp_path):
    split_csv = write_split(tmp_path)
    png = tmp_path / "img/0.png"
    png.write_bytes(png.read_bytes()[: len(png.read_bytes()) // 2])
    with pytest.raises(ValueError, match=r"img/0\.png: unreadable PNG \(OSError"):
        ImageDataset(split_csv, "train", preload=False)


@pytest.mark.parametrize("scale", [1, 2, 4, 8])
def test_downsampling_modes_shapes_and_means(tmp_path, scale):
    split_csv = write_split(tmp_path)
    full, _ = ImageDataset(split_csv, "train", scale=1)[0]
    upsampled, _ = ImageDataset(split_csv, "train", scale=scale, downsample_mode="pooled_upsampled")[0]
    smaller, _ = ImageDataset(split_csv, "train", scale=scale, downsample_mode="smaller_input")[0]
    assert upsampled.shape == (1, 32, 32)
    assert smaller.shape == (1, 32 // scale, 32 // scale)
    assert float(upsampled.mean()) == pytest.approx(float(full.mean()), abs=1e-6)
    assert float(smaller.mean()) == pytest.approx(float(full.mean()), abs=1e-6)
    # pooled_upsampled repeats each block mean over its S x S block
    blocks = full[0].reshape(32 // scale, scale, 32 // scale, scale).mean(dim=(1, 3))
    assert torch.allclose(smaller[0], blocks, atol=1e-6)
    assert torch.allclose(upsampled[0, ::scale, ::scale], blocks, atol=1e-6)
    assert torch.equal(upsampled, torch.nn.functional.interpolate(smaller[None], scale_factor=scale, mode="nearest")[0])


def test_a_pngs_image_hash_leaves_out_its_recorded_fingerprint_only(tmp_path):
    pixels = np.arange(64, dtype=np.uint8).reshape(8, 8)
    hashes = {}
    for name, image, fingerprint in (("a", pixels, "one"), ("b", pixels, "two"), ("c", pixels, None),
                                     ("d", 255 - pixels, "one")):
        write_png(image, tmp_path / f"{name}.png", fingerprint)
        hashes[name] = png_image_sha256((tmp_path / f"{name}.png").read_bytes())
    assert hashes["a"] == hashes["b"] == hashes["c"] != hashes["d"]
    assert (tmp_path / "a.png").read_bytes() != (tmp_path / "b.png").read_bytes()
    assert png_image_sha256(b"not a png") == hashlib.sha256(b"not a png").digest()


def test_downsampling_loses_information_only_when_scale_above_one():
    image = torch.rand(1, 8, 8)
    assert torch.equal(downsample(image, 1, "pooled_upsampled"), image)
    assert torch.equal(downsample(image, 1, "none"), image)  # the mode a run at S = 1 records
    assert not torch.allclose(downsample(image, 2, "pooled_upsampled"), image)
    with pytest.raises(ValueError, match="at scale 2, got 'none'"):
        downsample(image, 2, "none")


def test_input_size_and_invalid_options():
    assert input_size_for(256, 8, "smaller_input") == 32
    assert input_size_for(256, 8, "pooled_upsampled") == 256
    with pytest.raises(ValueError):
        input_size_for(256, 3, "smaller_input")
    with pytest.raises(ValueError):
        input_size_for(256, 2, "bilinear")


def test_resize_to_image_size(tmp_path):
    split_csv = write_split(tmp_path, size=40)
    dataset = ImageDataset(split_csv, "val", image_size=32, scale=2, downsample_mode="smaller_input")
    image, _ = dataset[0]
    assert dataset.image_size == 32 and dataset.input_size == 16 and image.shape == (1, 16, 16)


def test_preloaded_and_lazy_give_identical_items(tmp_path):
    split_csv = write_split(tmp_path, size=40)
    preloaded = ImageDataset(split_csv, "train", scale=2, image_size=32, preload=True)
    lazy = ImageDataset(split_csv, "train", scale=2, image_size=32, preload=False)
    assert preloaded.preloaded and not lazy.preloaded and preloaded.nbytes_cached == 6 * 32 * 32
    for index in range(len(preloaded)):
        assert torch.equal(preloaded[index][0], lazy[index][0])
    images, labels = preloaded[[3, 0, 5]]
    assert images.shape == (3, 1, 32, 32)
    assert torch.equal(images[0], preloaded[3][0]) and float(labels[2]) == float(preloaded[5][1])


def test_auto_preload_respects_the_memory_cap(tmp_path):
    split_csv = write_split(tmp_path)
    assert ImageDataset(split_csv, "train").preloaded
    assert not ImageDataset(split_csv, "train", preload_max_bytes=10).preloaded


def test_loader_order_follows_the_seed(tmp_path):
    split_csv = write_split(tmp_path)
    dataset = ImageDataset(split_csv, "train")

    def first_epoch_labels(seed):
        loader = make_loader(dataset, batch_size=6, shuffle=True, seed=seed)
        return [tuple(batch[1].tolist()) + (float(batch[0].sum()),) for batch in loader]

    assert first_epoch_labels(1) == first_epoch_labels(1)
    orders = {tuple(first_epoch_labels(seed)) for seed in range(5)}
    assert len(orders) > 1
    images, labels = next(iter(make_loader(dataset, batch_size=4, shuffle=False, seed=0)))
    assert images.shape == (4, 1, 32, 32) and labels.tolist() == [0.0, 1.0, 0.0, 1.0]


def test_worker_processes_give_the_same_batches(tmp_path):
    split_csv = write_split(tmp_path)
    dataset = ImageDataset(split_csv, "train")

    def batches(workers):
        loader = make_loader(dataset, batch_size=4, shuffle=True, seed=3, num_workers=workers)
        return [(images.sum().item(), labels.tolist()) for images, labels in loader]

    assert batches(0) == batches(2)


def test_reseeding_makes_an_epoch_order_a_function_of_the_seed(tmp_path):
    split_csv = write_split(tmp_path)
    dataset = ImageDataset(split_csv, "train")
    loader = make_loader(dataset, batch_size=1, shuffle=True, seed=0, num_workers=2)

    def order(seed):
        reseed_shuffle(loader, seed)
        return [float(images.sum()) for images, _ in loader]

    first = order(5)
    order(6)  # an epoch in between, as after a resume it would not have happened
    assert order(5) == first
