"""What writing a training job's last.pt costs, per model and setting, against the length of an epoch.

last.pt holds the weights and the optimiser state (leanmed.train.checkpoint): per parameter 4 bytes of float32
weights (2 for half weights) plus 8 bytes of torch Adam state, about 2 bytes of 8-bit Adam state. For each model
(1 input channel, 1 logit, random weights) and setting this builds the setting's optimiser, runs one real step on a
batch of 2 random images so that the state exists, and times leanmed's own ``save_atomically`` of {weights, optimiser
state} (torch.save to a temporary file, fsync, rename): the median of ``--repeats`` writes, wall seconds, to
``--dir`` (the folder results/ would be on). It then prints what writing it after every epoch adds to epochs of
``--epoch-seconds``, and what ``training.checkpoint_interval_s`` (default 60) leaves of that.

Epochs on a GPU: the RSNA cohort's training split is about 7,100 images (60 % of the paper's 11,856); at the H200's
measured rates (BENCHMARKS.md: densenet121 fp32 about 620 img/s, ViT-B/32+ bf16 about 1,475 img/s) an epoch takes
5-12 s of training plus validation.

Usage: python benchmarks/checkpoint_cost.py [--models mlp densenet121 vit_base_patch32_plus_256]
       [--settings fp32 8bit half_8bit] [--repeats 3] [--dir results] [--epoch-seconds 10]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import torch

from leanmed.train.checkpoint import save_atomically
from leanmed.train.models import build_model
from leanmed.train.settings import build_optimizer, prepare_model, resolve


def last_pt_payload(model_name: str, setting: str, image_size: int) -> dict:
    """Weights and optimiser state after one real step, as last.pt carries them."""
    resolved = resolve(setting, "cpu")
    model = prepare_model(build_model(model_name, image_size, pretrained=False), resolved)
    optimizer = build_optimizer(model.parameters(), resolved, lr=1e-5)
    images = torch.randn(2, 1, image_size, image_size, dtype=resolved.weight_dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # bitsandbytes' notes on CPU
        model(images).float().sum().backward()
        optimizer.step()
    return {"model_state": model.state_dict(), "optimizer_state": optimizer.state_dict()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["mlp", "densenet121", "vit_base_patch32_plus_256"])
    parser.add_argument("--settings", nargs="+", default=["fp32", "8bit", "half_8bit"])
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dir", default="results", help="where to write (created; the file is removed after)")
    parser.add_argument("--epoch-seconds", type=float, default=10.0)
    parser.add_argument("--interval", type=float, default=60.0, help="training.checkpoint_interval_s")
    args = parser.parse_args()

    Path(args.dir).mkdir(parents=True, exist_ok=True)
    print(f"last.pt written with fsync into {Path(args.dir).resolve()}; epochs of {args.epoch_seconds:g} s; "
          f"median of {args.repeats} writes")
    print(f"{'model':28s} {'setting':10s} {'last.pt MB':>10s} {'write s':>8s} {'every epoch':>12s} "
          f"{f'every {args.interval:g} s':>12s}")
    for model_name in args.models:
        for setting in args.settings:
            payload = last_pt_payload(model_name, setting, args.image_size)
            with tempfile.TemporaryDirectory(dir=args.dir) as folder:
                path = Path(folder) / "last.pt"
                seconds = []
                for _ in range(args.repeats):
                    started = time.perf_counter()
                    save_atomically(payload, path)
                    seconds.append(time.perf_counter() - started)
                size_mb = path.stat().st_size / 1e6
            write_s = statistics.median(seconds)
            # Writes per epoch: 1, or one per interval (at least one per job: the end; not counted here).
            per_epoch = write_s / args.epoch_seconds
            per_interval = write_s / max(args.interval, args.epoch_seconds)
            print(f"{model_name:28s} {setting:10s} {size_mb:10.1f} {write_s:8.2f} {per_epoch:11.1%} "
                  f"{per_interval:11.1%}")


if __name__ == "__main__":
    main()
