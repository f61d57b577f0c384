"""Training settings (precision of weights and compute, optimiser) as data, and what each one runs on a device.

A ``Setting`` says what is asked for; ``resolve(setting, device)`` says what actually runs there:

- AMP on CUDA: float16 autocast with a GradScaler (the paper's torch.cuda.amp). AMP on CPU: bfloat16 autocast
  without a scaler, since float16 convolutions on CPU are very slow and bfloat16 has float32's range (nothing to
  scale). The record says which one ran.
- Half-precision weights (float16): the whole model is cast with ``.to(float16)``; inputs are cast too. No GradScaler:
  it cannot unscale float16 gradients.
- 8-bit Adam: ``bitsandbytes.optim.Adam8bit`` (or ``PagedAdam8bit``) built directly. Its state is 8-bit (uint8 moments
  plus one float32 absmax per block of 256 values) for tensors of at least 4096 elements; smaller tensors keep 32-bit
  state. (timm's optimizer factory maps "bnbadam8bit" to a 32-bit Adam, hence no timm here.)
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Iterable, Mapping

import torch

from leanmed.train.registry import PAPER_SETTINGS, SETTINGS, Setting, get_setting

__all__ = [
    "Setting",
    "ResolvedSetting",
    "SETTINGS",
    "PAPER_SETTINGS",
    "get_setting",
    "resolve",
    "resolve_device",
    "build_optimizer",
    "make_grad_scaler",
    "OPTIMIZER_CLASSES",
    "EIGHT_BIT_MIN_ELEMENTS",
]

# bitsandbytes keeps 32-bit state for tensors with fewer elements than this (its default min_8bit_size).
EIGHT_BIT_MIN_ELEMENTS = 4096

# Public import path of each optimiser (what the record shows), and its state width in bits.
OPTIMIZER_CLASSES: Mapping[str, str] = MappingProxyType(
    {
        "adam": "torch.optim.Adam",
        "adam8bit": "bitsandbytes.optim.Adam8bit",
        "paged_adam8bit": "bitsandbytes.optim.PagedAdam8bit",
    }
)
_OPTIMIZER_STATE_BITS = {"adam": 32, "adam8bit": 8, "paged_adam8bit": 8}
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class ResolvedSetting:
    """What a setting runs on one device.

    device: "cpu" or "cuda" (or "cuda:N"). weight_dtype: parameter dtype. autocast_dtype: dtype of autocast regions,
    None without autocast. grad_scaler: whether a torch.amp.GradScaler scales the loss. optimizer_class: public import
    path of the optimiser class. optimizer_state_bits: bits per moment value of the optimiser state for tensors of at
    least EIGHT_BIT_MIN_ELEMENTS elements (smaller ones are 32-bit with bitsandbytes). notes: why the resolution
    differs from the name, where it does.
    """

    setting: Setting
    device: str
    weight_dtype: torch.dtype
    autocast_dtype: torch.dtype | None
    grad_scaler: bool
    optimizer_class: str
    optimizer_state_bits: int
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def name(self) -> str:
        return self.setting.name

    @property
    def device_type(self) -> str:
        return torch.device(self.device).type

    def autocast(self):
        """Context manager for forward passes: torch.autocast with the resolved dtype, or a no-op."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.autocast_dtype)

    def record(self) -> dict:
        """The "setting" block of metrics.json."""
        return {
            "name": self.setting.name,
            "description": self.setting.description,
            "device": self.device,
            "weight_dtype": _dtype_name(self.weight_dtype),
            "autocast_dtype": _dtype_name(self.autocast_dtype) if self.autocast_dtype is not None else None,
            "grad_scaler": self.grad_scaler,
            "optimizer_class": self.optimizer_class,
            "optimizer_state_bits": self.optimizer_state_bits,
            "paper_flags": dict(self.setting.paper_flags),
            "in_paper": self.setting.in_paper,
            "notes": list(self.notes),
        }


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def resolve_device(device: str = "auto") -> str:
    """"auto" -> "cuda" when CUDA is available, else "cpu"; other values are checked and returned."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    kind = torch.device(device).type
    if kind == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} asked for, but CUDA is not available")
    if kind not in ("cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda[:N], got {device!r}")
    return device


def resolve(setting: Setting | str, device: str) -> ResolvedSetting:
    """Decide what ``setting`` runs on ``device`` (see the module docstring)."""
    if isinstance(setting, str):
        setting = get_setting(setting)
    device = resolve_device(device)
    on_cuda = torch.device(device).type == "cuda"
    notes: list[str] = []
    weight_dtype = _DTYPES[setting.weight_dtype]

    autocast_dtype = None
    grad_scaler = False
    if setting.autocast:
        if setting.autocast_dtype == "device":
            autocast_dtype = torch.float16 if on_cuda else torch.bfloat16
            if not on_cuda:
                notes.append("AMP on CPU runs bfloat16 autocast without a GradScaler (float16 autocast on CPU is "
                             "very slow; bfloat16 has float32's exponent range, so no loss scaling is needed)")
        else:
            autocast_dtype = _DTYPES[setting.autocast_dtype]
        grad_scaler = on_cuda and autocast_dtype == torch.float16 and weight_dtype == torch.float32
    if weight_dtype == torch.float16:
        notes.append("float16 weights: no GradScaler (it cannot unscale float16 gradients)")
    if setting.optimizer != "adam":
        notes.append(f"8-bit state for tensors of at least {EIGHT_BIT_MIN_ELEMENTS} elements; smaller tensors keep "
                     "32-bit state (bitsandbytes min_8bit_size)")
        if setting.optimizer == "paged_adam8bit" and not on_cuda:
            notes.append("paged optimiser state falls back to ordinary memory on CPU")

    return ResolvedSetting(
        setting=setting,
        device=device,
        weight_dtype=weight_dtype,
        autocast_dtype=autocast_dtype,
        grad_scaler=grad_scaler,
        optimizer_class=OPTIMIZER_CLASSES[setting.optimizer],
        optimizer_state_bits=_OPTIMIZER_STATE_BITS[setting.optimizer],
        notes=tuple(notes),
    )


def build_optimizer(
    params: Iterable[torch.nn.Parameter], resolved: ResolvedSetting, lr: float
) -> torch.optim.Optimizer:
    """The setting's optimiser with learning rate ``lr`` and the library defaults (betas 0.9/0.999, eps 1e-8)."""
    optimizer = resolved.setting.optimizer
    if optimizer == "adam":
        return torch.optim.Adam(params, lr=lr)
    import bitsandbytes as bnb  # imported here: loading its native library is only needed for 8-bit settings

    if optimizer == "adam8bit":
        return bnb.optim.Adam8bit(params, lr=lr, min_8bit_size=EIGHT_BIT_MIN_ELEMENTS)
    if optimizer == "paged_adam8bit":
        return bnb.optim.PagedAdam8bit(params, lr=lr, min_8bit_size=EIGHT_BIT_MIN_ELEMENTS)
    raise ValueError(f"unknown optimizer {optimizer!r}")


def make_grad_scaler(resolved: ResolvedSetting) -> torch.amp.GradScaler | None:
    """A GradScaler for float16 autocast on CUDA with float32 weights; None otherwise."""
    if not resolved.grad_scaler:
        return None
    return torch.amp.GradScaler(resolved.device_type)
