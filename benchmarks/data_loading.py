"""Throughput of leanmed's image loading against what the model consumes in training.

Generates N grey PNGs (default 512 of 256x256, 8-bit) and a split.csv in a temporary folder, then measures:
- loader: images/s of ``make_loader(ImageDataset(...))`` over the whole split, batches of 32 (preloaded decoded pixels,
  which is what jobs use when the split fits in memory; also the lazy decode-every-time path and each downsampling
  mode at S = 8);
- model: images/s of training steps (forward, backward, Adam step) of ``--model`` at 256x256, batch 32, fp32, on this
  machine's device, on tensors already in memory.
Goal: loader >= 3x model. (On a GPU machine the model figure is the GPU's; run there for the real margin.)

Usage: python benchmarks/data_loading.py [--images 512] [--model densenet121] [--steps 3] [--workers 0]
"""

from __future__ import annotations

import argparse
import csv
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from leanmed.data.images import ImageDataset, make_loader
from leanmed.train.loop import train_one_epoch
from leanmed.train.measure import synchronize
from leanmed.train.models import build_model
from leanmed.train.settings import build_optimizer, resolve, resolve_device

GOAL_RATIO = 3.0


def write_images(root: Path, count: int, size: int) -> Path:
    rng = np.random.default_rng(0)
    (root / "png").mkdir(parents=True)
    rows = []
    for index in range(count):
        path = f"png/{index}.png"
        Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8)).save(root / path)
        rows.append({"image_id": str(index), "subject_id": str(index), "label": index % 2, "path": path,
                     "split": "train"})
    with open(root / "split.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return root / "split.csv"


def loader_images_per_second(dataset: ImageDataset, workers: int, repeats: int = 3) -> float:
    loader = make_loader(dataset, batch_size=32, shuffle=True, seed=0, num_workers=workers)
    best = 0.0
    for _ in range(repeats):
        started = time.perf_counter()
        count = sum(labels.shape[0] for _, labels in loader)
        best = max(best, count / (time.perf_counter() - started))
    return best


def model_images_per_second(model_name: str, size: int, steps: int, device: str) -> float:
    resolved = resolve("fp32", device)
    model = build_model(model_name, size).to(device)
    optimizer = build_optimizer(model.parameters(), resolved, lr=1e-5)
    batches = [(torch.rand(32, 1, size, size), torch.randint(0, 2, (32,)).float()) for _ in range(steps)]
    train_one_epoch(model, batches[:1], optimizer, None, resolved)  # warm-up
    synchronize(device)
    result = train_one_epoch(model, batches, optimizer, None, resolved)
    return result.n_images / result.seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--model", default="densenet121")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    device = resolve_device(args.device)
    with tempfile.TemporaryDirectory() as folder:
        split_csv = write_images(Path(folder), args.images, args.size)
        started = time.perf_counter()
        preloaded = ImageDataset(split_csv, "train", preload=True)
        preload_seconds = time.perf_counter() - started
        print(f"data loading: {args.images} PNGs {args.size}x{args.size} 8-bit, batch 32, {args.workers} workers; "
              f"preloading (decode once) took {preload_seconds:.2f} s ({args.images / preload_seconds:.0f} images/s)")
        results = {"preloaded, S=1": loader_images_per_second(preloaded, args.workers)}
        for mode in ("pooled_upsampled", "smaller_input"):
            dataset = ImageDataset(split_csv, "train", scale=8, downsample_mode=mode, preload=True)
            results[f"preloaded, S=8 {mode}"] = loader_images_per_second(dataset, args.workers)
        lazy = ImageDataset(split_csv, "train", preload=False)
        results["lazy (decode each access), S=1"] = loader_images_per_second(lazy, args.workers, repeats=1)
    consumed = model_images_per_second(args.model, args.size, args.steps, device)
    print(f"model: {args.model} training (fp32, forward+backward+Adam) on {device}: {consumed:.1f} images/s")
    print(f"{'loader':<36} {'images/s':>10} {'x model':>9}")
    for name, rate in results.items():
        print(f"{name:<36} {rate:>10.0f} {rate / consumed:>9.1f}")
    ratio = results["preloaded, S=1"] / consumed
    print(f"goal: preloaded loader >= {GOAL_RATIO}x model consumption: {'met' if ratio >= GOAL_RATIO else 'NOT met'} "
          f"({ratio:.1f}x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
