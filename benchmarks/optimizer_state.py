"""Optimizer-state bytes per parameter for each setting, measured after one optimiser step.

Two cases:
- "large tensors": parameters of 4096 elements or more only (512x512, 1024x256, 64x64), where bitsandbytes keeps
  8-bit state; goal: 8-bit settings <= 2.05 B/param against 8.0 for float32 torch Adam.
- a real model (default densenet121, 1 input channel, 1 logit), where small tensors (biases, BatchNorm) keep 32-bit
  state even with 8-bit Adam.

Bytes = distinct storages of every tensor in optimizer.state (leanmed.train.measure.optimizer_state_bytes).
Usage: python benchmarks/optimizer_state.py [--model densenet121] [--image-size 256]
"""

from __future__ import annotations

import argparse
import warnings

import torch

from leanmed.train.measure import optimizer_state_bytes
from leanmed.train.models import build_model
from leanmed.train.settings import SETTINGS, build_optimizer, resolve

GOAL_8BIT_BYTES_PER_PARAM = 2.05


def state_bytes_per_parameter(parameters: list[torch.nn.Parameter], setting: str) -> float:
    resolved = resolve(setting, "cpu")
    cast = [torch.nn.Parameter(p.detach().to(resolved.weight_dtype)) for p in parameters]
    optimizer = build_optimizer(cast, resolved, lr=1e-5)
    generator = torch.Generator().manual_seed(0)
    for parameter in cast:
        parameter.grad = torch.randn(parameter.shape, generator=generator).to(parameter.dtype)
    optimizer.step()
    return optimizer_state_bytes(optimizer) / sum(p.numel() for p in cast)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="densenet121")
    parser.add_argument("--image-size", type=int, default=256)
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message="Paged optimizers are not supported on CPU")

    large = [torch.nn.Parameter(torch.randn(shape)) for shape in ((512, 512), (1024, 256), (64, 64))]
    model = build_model(args.model, args.image_size)
    model_parameters = list(model.parameters())
    n_large = sum(p.numel() for p in large)
    n_model = sum(p.numel() for p in model_parameters)
    print(f"optimizer state bytes per parameter (CPU, torch {torch.__version__})")
    print(f"large tensors only: {n_large:,} parameters; {args.model}: {n_model:,} parameters")
    print(f"{'setting':<12} {'optimizer':<34} {'weights':<9} {'large B/param':>13} {args.model + ' B/param':>22}")
    failures = []
    for name in SETTINGS:
        resolved = resolve(name, "cpu")
        per_param_large = state_bytes_per_parameter(large, name)
        per_param_model = state_bytes_per_parameter(model_parameters, name)
        print(f"{name:<12} {resolved.optimizer_class:<34} {str(resolved.weight_dtype).removeprefix('torch.'):<9} "
              f"{per_param_large:>13.3f} {per_param_model:>22.3f}")
        if resolved.optimizer_state_bits == 8 and per_param_large > GOAL_8BIT_BYTES_PER_PARAM:
            failures.append(name)
    verdict = "met" if not failures else f"NOT met by {failures}"
    print(f"goal: 8-bit settings <= {GOAL_8BIT_BYTES_PER_PARAM} B/param on large tensors (fp32 Adam: 8.0): {verdict}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
