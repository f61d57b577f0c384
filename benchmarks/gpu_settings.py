"""Peak GPU memory and step time of each setting on a GPU: densenet121 at 256x256, batch 32, synthetic tensors.

Per setting: a fresh model and optimiser, ``--steps`` training steps of leanmed's ``train_one_epoch`` on random images
already on the host; peak memory = torch.cuda.max_memory_allocated after a reset before the steps (weights, gradients,
optimiser state, activations; CUDA context excluded); step time = median over the steps after ``--warmup`` steps
(each step timed with CUDA synchronisation). Ratios are to fp32. Without a GPU it says so and exits 0.

Usage: python benchmarks/gpu_settings.py [--model densenet121] [--image-size 256] [--batch-size 32] [--steps 20]
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time

import torch

from leanmed.train.loop import train_one_epoch
from leanmed.train.models import build_model
from leanmed.train.settings import SETTINGS, build_optimizer, make_grad_scaler, resolve


def measure(setting: str, args) -> dict:
    resolved = resolve(setting, "cuda")
    torch.manual_seed(0)
    model = build_model(args.model, args.image_size).to(device="cuda", dtype=resolved.weight_dtype)
    optimizer = build_optimizer(model.parameters(), resolved, lr=1e-5)
    scaler = make_grad_scaler(resolved)
    batch = (torch.rand(args.batch_size, 1, args.image_size, args.image_size).pin_memory(),
             torch.randint(0, 2, (args.batch_size,)).float().pin_memory())
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    step_seconds, diverged = [], False
    for step in range(args.warmup + args.steps):
        torch.cuda.synchronize()
        started = time.perf_counter()
        result = train_one_epoch(model, [batch], optimizer, scaler, resolved, divergence_check_every=1)
        torch.cuda.synchronize()
        diverged = diverged or result.diverged
        if step >= args.warmup:
            step_seconds.append(time.perf_counter() - started)
    peak = torch.cuda.max_memory_allocated()
    del model, optimizer, scaler
    gc.collect()
    torch.cuda.empty_cache()
    return {"peak": peak, "step": statistics.median(step_seconds), "diverged": diverged,
            "autocast": resolved.autocast_dtype, "scaler": resolved.grad_scaler}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="densenet121")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--settings", default=",".join(SETTINGS))
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("gpu_settings: no CUDA GPU on this machine; nothing measured (run it on a GPU machine).")
        return 0
    print(f"gpu settings: {args.model} {args.image_size}px batch {args.batch_size}, {args.steps} timed steps after "
          f"{args.warmup} warm-up, {torch.cuda.get_device_name()} (torch {torch.__version__}, CUDA {torch.version.cuda})")
    results = {name: measure(name, args) for name in args.settings.split(",")}
    reference = results.get("fp32")
    print(f"{'setting':<11} {'peak GiB':>9} {'/fp32':>6} {'s/step':>8} {'/fp32':>6}  notes")
    for name, result in results.items():
        memory_ratio = result["peak"] / reference["peak"] if reference else float("nan")
        time_ratio = result["step"] / reference["step"] if reference else float("nan")
        notes = f"autocast {result['autocast']}, scaler {result['scaler']}" + (", DIVERGED" if result["diverged"] else "")
        print(f"{name:<11} {result['peak'] / 2**30:>9.2f} {memory_ratio:>6.2f} {result['step']:>8.4f} "
              f"{time_ratio:>6.2f}  {notes}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
