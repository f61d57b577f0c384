"""Per-step time of leanmed's training loop against a bare PyTorch loop, same model, batches and setting.

leanmed: ``leanmed.train.loop.train_one_epoch`` (what every job runs: dtype cast, autocast, float32 BCE, optional
GradScaler, running loss on the device, divergence check, SIGTERM check). Bare: the minimal loop doing the same
arithmetic (15 lines below). Both iterate over the same list of pre-made batches, so data loading is excluded.
Rounds alternate bare/leanmed to spread machine noise; the figure is the median per-step time over rounds.
Goal: leanmed / bare <= 1.05.

Usage: python benchmarks/train_step.py [--model test_resnet] [--image-size 64] [--batch-size 32] [--steps 10]
       [--rounds 5] [--settings fp32,amp,8bit,amp_8bit,half_8bit] [--device auto]
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch
import torch.nn.functional as F

from leanmed.train.loop import train_one_epoch
from leanmed.train.measure import synchronize
from leanmed.train.models import build_model
from leanmed.train.settings import build_optimizer, make_grad_scaler, resolve, resolve_device

GOAL_RATIO = 1.05


def bare_loop(model, batches, optimizer, scaler, device, weight_dtype, autocast_dtype):
    for images, labels in batches:
        images = images.to(device=device, dtype=weight_dtype)
        labels = labels.to(device)
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device_type=torch.device(device).type, dtype=autocast_dtype or torch.float32,
                            enabled=autocast_dtype is not None):
            logits = model(images)
        loss = F.binary_cross_entropy_with_logits(logits.float().squeeze(1), labels)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()


def measure_setting(args, setting: str, device: str) -> tuple[float, float]:
    resolved = resolve(setting, device)
    generator = torch.Generator().manual_seed(0)
    batches = [
        (torch.rand(args.batch_size, 1, args.image_size, args.image_size, generator=generator),
         torch.randint(0, 2, (args.batch_size,), generator=generator).float())
        for _ in range(args.steps)
    ]
    torch.manual_seed(0)
    model = build_model(args.model, args.image_size).to(device=device, dtype=resolved.weight_dtype)
    optimizer = build_optimizer(model.parameters(), resolved, lr=1e-5)
    scaler = make_grad_scaler(resolved)
    model.train()

    def timed(function) -> float:
        synchronize(device)
        started = time.perf_counter()
        function()
        synchronize(device)
        return (time.perf_counter() - started) / args.steps

    run_bare = lambda: bare_loop(model, batches, optimizer, scaler, device, resolved.weight_dtype,
                                 resolved.autocast_dtype)
    run_leanmed = lambda: train_one_epoch(model, batches, optimizer, scaler, resolved)
    run_bare()  # warm-up: allocator, kernels, optimiser state
    run_leanmed()
    bare, leanmed = [], []
    for _ in range(args.rounds):
        bare.append(timed(run_bare))
        leanmed.append(timed(run_leanmed))
    return statistics.median(bare), statistics.median(leanmed)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="test_resnet")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--settings", default="fp32,amp,8bit,amp_8bit,half_8bit")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message="Paged optimizers are not supported on CPU")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    print(f"train step: {args.model} {args.image_size}px batch {args.batch_size}, {args.steps} steps x "
          f"{args.rounds} rounds, device {device}, torch threads {torch.get_num_threads()}")
    print(f"{'setting':<11} {'bare s/step':>12} {'leanmed s/step':>15} {'ratio':>7}")
    worst = 0.0
    for setting in args.settings.split(","):
        bare, leanmed = measure_setting(args, setting, device)
        ratio = leanmed / bare
        worst = max(worst, ratio)
        print(f"{setting:<11} {bare:>12.4f} {leanmed:>15.4f} {ratio:>7.3f}")
    print(f"goal: leanmed / bare <= {GOAL_RATIO}: {'met' if worst <= GOAL_RATIO else 'NOT met'} (worst {worst:.3f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
