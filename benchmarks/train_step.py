"""Per-step time of leanmed's training loop against a bare PyTorch loop, same model, batches and setting.

leanmed: ``leanmed.train.loop.train_one_epoch`` (what every job runs: dtype cast, autocast, float32 BCE, optional
GradScaler, running loss on the device, divergence check, SIGTERM check). Bare: the minimal loop doing the same
arithmetic (15 lines below). Both iterate over the same list of pre-made batches, so data loading is excluded.
Rounds alternate bare/leanmed to spread machine noise; the figure is the median per-step time over rounds.
Goal: leanmed / bare <= 1.05.

Usage: python benchmarks/train_step.py [--model test_resnet] [--image-size 64] [--batch-size 32] [--steps 10]
       [--rounds 5] [--settings fp32,amp,8bit,amp_8bit,half_8bit] [--device auto]

GPU comparison (CUDA only; without CUDA it says it was skipped, at once, and runs the part above): leanmed's step with
the tuned options (``training.tuned_step: true``: channels_last, cudnn.benchmark, fused torch Adam, applied the way
``leanmed.train.job`` applies them: ``resolve(..., tuned_step=True)``, ``prepare_model``, ``build_optimizer``,
``cudnn_benchmark``, ``train_one_epoch``) against a bare tuned loop written below (timm model, channels_last,
cudnn.benchmark, fused Adam; the anchor of ../shared/gpu/h200-2026-11-27/step_probe.py). Per model and setting
(fp32; amp = float16 autocast + GradScaler; bf16_mixed = bfloat16 autocast): median seconds per step over repeats
after warm-up steps, CUDA synchronised, bare and leanmed alternating; also leanmed's eager step (the paper's, the
default) for the speed-up the options give. Both take the same pinned CPU batches and copy them to the GPU each step,
as a job's loader does. Goal: leanmed tuned / bare tuned <= 1.05.

    python benchmarks/train_step.py --gpu-only            # densenet121 + vit_base_patch32_plus_256, 256 px, batch 32
    python benchmarks/train_step.py --gpu-only --gpu-models densenet121 --gpu-settings fp32 --gpu-steps 10
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
from leanmed.train.settings import (
    build_optimizer,
    cudnn_benchmark,
    make_grad_scaler,
    prepare_model,
    resolve,
    resolve_device,
)

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


# --------------------------------------------------------------------------------------------------------------------
# GPU comparison: leanmed's tuned step against a bare tuned loop


def bare_tuned_loop(model, batches, optimizer, scaler, autocast_dtype, device="cuda"):
    """A tuned training loop as a user writes it: channels_last batches, cudnn.benchmark on, fused Adam (the model
    and optimiser are made so by the caller), the setting's autocast and GradScaler."""
    torch.backends.cudnn.benchmark = True
    for images, labels in batches:
        images = images.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        labels = labels.to(device, non_blocking=True)
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
            logits = model(images)
        loss = F.binary_cross_entropy_with_logits(logits.float().squeeze(1), labels)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()


def _bare_model(name: str, image_size: int) -> torch.nn.Module:
    import timm

    from leanmed.train.models import get_model_spec

    timm_name = get_model_spec(name).timm_name or name
    extra = {"img_size": image_size} if any(kind in timm_name for kind in ("vit", "swin")) else {}
    return timm.create_model(timm_name, pretrained=False, in_chans=1, num_classes=1, **extra)


def _time_steps(function, n_steps: int, device: str) -> float:
    synchronize(device)
    started = time.perf_counter()
    function()
    synchronize(device)
    return (time.perf_counter() - started) / n_steps


def compare_on_gpu(args, model_name: str, setting: str) -> dict:
    """Median s/step of the bare tuned loop, leanmed tuned and leanmed eager for one model and setting."""
    size, batch, device = args.gpu_image_size, args.gpu_batch_size, args.gpu_device
    on_cuda = device == "cuda"
    pin = (lambda tensor: tensor.pin_memory()) if on_cuda else (lambda tensor: tensor)
    generator = torch.Generator().manual_seed(0)
    batches = [
        (pin(torch.rand(batch, 1, size, size, generator=generator)),
         pin(torch.randint(0, 2, (batch,), generator=generator).float()))
        for _ in range(args.gpu_steps)
    ]
    warm = batches[: args.gpu_warmup]
    previous_benchmark = torch.backends.cudnn.benchmark

    # leanmed, as leanmed.train.job builds and runs a job with training.tuned_step true (and false: the eager step)
    tuned = resolve(setting, device, tuned_step=True)
    torch.manual_seed(0)
    lean_model = prepare_model(build_model(model_name, size), tuned)
    lean_optimizer = build_optimizer(lean_model.parameters(), tuned, lr=1e-5)
    lean_scaler = make_grad_scaler(tuned)

    def run_leanmed(data):
        with cudnn_benchmark(tuned):
            train_one_epoch(lean_model, data, lean_optimizer, lean_scaler, tuned)

    # the bare tuned loop
    torch.manual_seed(0)
    bare_model = _bare_model(model_name, size).to(device).to(memory_format=torch.channels_last).train()
    bare_optimizer = torch.optim.Adam(bare_model.parameters(), lr=1e-5, fused=on_cuda)
    bare_scaler = torch.amp.GradScaler(device) if tuned.grad_scaler else None

    def run_bare(data):
        try:
            bare_tuned_loop(bare_model, data, bare_optimizer, bare_scaler, tuned.autocast_dtype, device)
        finally:
            torch.backends.cudnn.benchmark = previous_benchmark

    runs = {"bare": run_bare, "leanmed": run_leanmed}
    if not args.no_eager:
        eager = resolve(setting, device)
        torch.manual_seed(0)
        eager_model = prepare_model(build_model(model_name, size), eager)
        eager_optimizer = build_optimizer(eager_model.parameters(), eager, lr=1e-5)
        eager_scaler = make_grad_scaler(eager)
        runs["leanmed_eager"] = lambda data: train_one_epoch(eager_model, data, eager_optimizer, eager_scaler, eager)

    for function in runs.values():  # warm-up: cudnn autotuning, allocator, optimiser state, kernels
        function(warm)
    times = {name: [] for name in runs}
    for _ in range(args.gpu_repeats):
        for name, function in runs.items():
            times[name].append(_time_steps(lambda: function(batches), len(batches), device))
    result = {name: statistics.median(values) for name, values in times.items()}
    del lean_model, lean_optimizer, bare_model, bare_optimizer, runs
    if on_cuda:
        torch.cuda.empty_cache()
    return result


def gpu_comparison(args) -> float | None:
    """Print the GPU comparison table; return the worst leanmed/bare ratio (None when skipped)."""
    if args.gpu_device == "cuda" and not torch.cuda.is_available():
        print("GPU comparison: skipped (CUDA not available)", flush=True)
        return None
    import timm

    where = torch.cuda.get_device_name() if args.gpu_device == "cuda" else "cpu (a smoke test of this script only)"
    print(f"GPU comparison on {where}: torch {torch.__version__}, timm {timm.__version__}, "
          f"{args.gpu_image_size}px batch {args.gpu_batch_size}, 1 channel, {args.gpu_steps} steps x "
          f"{args.gpu_repeats} repeats after {args.gpu_warmup} warm-up steps; s/step medians", flush=True)
    header = (f"{'model':<26} {'setting':<10} {'bare tuned':>10} {'leanmed tuned':>13} {'ratio':>6} "
              f"{'leanmed eager':>13} {'tuned/eager':>11} {'took s':>6}")
    rows, worst = [], 0.0
    print(header, flush=True)
    for model_name in args.gpu_models.split(","):
        for setting in args.gpu_settings.split(","):
            started = time.perf_counter()
            try:
                result = compare_on_gpu(args, model_name, setting)
            except Exception as error:  # one failing variant must not cost the rest of a rare GPU session
                line = f"{model_name:<26} {setting:<10} FAILED: {type(error).__name__}: {error}"
                print(line[:300], flush=True)
                rows.append(line[:300])
                if args.gpu_device == "cuda":
                    torch.cuda.empty_cache()
                continue
            ratio = result["leanmed"] / result["bare"]
            worst = max(worst, ratio)
            eager = result.get("leanmed_eager")
            line = (f"{model_name:<26} {setting:<10} {result['bare']:>10.4f} {result['leanmed']:>13.4f} {ratio:>6.3f} "
                    + (f"{eager:>13.4f} {result['leanmed'] / eager:>11.2f}" if eager else f"{'-':>13} {'-':>11}")
                    + f" {time.perf_counter() - started:>6.0f}")
            print(line, flush=True)
            rows.append(line)
    print(f"\nSummary (ratio = leanmed tuned / bare tuned; goal <= {GOAL_RATIO}: "
          f"{'met' if 0 < worst <= GOAL_RATIO else 'NOT met'}, worst {worst:.3f})")
    print(header)
    print("\n".join(rows), flush=True)
    return worst


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
    parser.add_argument("--gpu-only", "--gpu", action="store_true", help="only the GPU comparison")
    parser.add_argument("--no-gpu", action="store_true", help="skip the GPU comparison")
    parser.add_argument("--gpu-models", default="densenet121,vit_base_patch32_plus_256")
    parser.add_argument("--gpu-settings", default="fp32,amp,bf16_mixed")
    parser.add_argument("--gpu-image-size", type=int, default=256)
    parser.add_argument("--gpu-batch-size", type=int, default=32)
    parser.add_argument("--gpu-steps", type=int, default=20, help="timed steps per repeat")
    parser.add_argument("--gpu-warmup", type=int, default=5, help="warm-up steps (of the same batches)")
    parser.add_argument("--gpu-repeats", type=int, default=3)
    parser.add_argument("--no-eager", action="store_true", help="skip leanmed's eager step (the reference)")
    parser.add_argument("--gpu-device", default="cuda", choices=["cuda", "cpu"],
                        help="cpu: run the comparison's code on the CPU to check the script (timings meaningless)")
    args = parser.parse_args()
    args.gpu_warmup = max(1, min(args.gpu_warmup, args.gpu_steps))
    warnings.filterwarnings("ignore", message="Paged optimizers are not supported on CPU")
    if not args.no_gpu:
        gpu_comparison(args)  # first: on a GPU machine it is the part that matters; without CUDA one line, at once
    if args.gpu_only:
        return 0
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
