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

The training step itself is the paper's eager step unless asked otherwise (``resolve(..., tuned_step=True)``, the
workflow's ``training.tuned_step``): then ``StepOptions`` turns on the usual speed options where they apply:
channels_last memory format (model and image batches), ``torch.backends.cudnn.benchmark`` (CUDA only) and torch
Adam's ``fused=True`` (CUDA only; bitsandbytes optimisers are unchanged); ``compile=True`` adds ``torch.compile``.
Each option is recorded as requested, applied, or not applied with the reason (``setting.step`` in metrics.json).
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
    "STEP_OPTIONS",
    "TUNED_STEP_OPTIONS",
    "StepOptions",
    "resolve_step",
    "prepare_model",
    "cudnn_benchmark",
    "to_step_format",
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

# The training step's speed options (record name -> how captions print it), in the order records list them.
STEP_OPTIONS: Mapping[str, str] = MappingProxyType(
    {"channels_last": "channels_last", "cudnn_benchmark": "cudnn.benchmark", "fused_adam": "fused Adam",
     "compile": "torch.compile"}
)
# What the one switch (tuned_step) asks for; torch.compile is asked for on its own (slow to compile, off by default).
TUNED_STEP_OPTIONS = ("channels_last", "cudnn_benchmark", "fused_adam")


@dataclass(frozen=True)
class StepOptions:
    """The training step's speed options: which were asked for (``requested``), which run (``applied``), and why a
    requested one does not (``not_applied``: (option, reason) pairs). The default is the paper's eager step."""

    requested: tuple[str, ...] = ()
    applied: tuple[str, ...] = ()
    not_applied: tuple[tuple[str, str], ...] = ()

    @property
    def channels_last(self) -> bool:
        return "channels_last" in self.applied

    @property
    def cudnn_benchmark(self) -> bool:
        return "cudnn_benchmark" in self.applied

    @property
    def fused_adam(self) -> bool:
        return "fused_adam" in self.applied

    @property
    def compile(self) -> bool:
        return "compile" in self.applied

    @property
    def label(self) -> str:
        """"eager (paper)" or e.g. "tuned (channels_last, cudnn.benchmark, fused Adam)" (what was applied)."""
        return step_label(self.applied)

    def record(self) -> dict:
        """The "step" block of metrics.json's setting block."""
        return {"requested": list(self.requested), "applied": list(self.applied),
                "not_applied": dict(self.not_applied), "label": self.label}


def step_label(applied: Iterable[str]) -> str:
    applied = [name for name in STEP_OPTIONS if name in set(applied)]
    if not applied:
        return "eager (paper)"
    return "tuned (" + ", ".join(STEP_OPTIONS[name] for name in applied) + ")"


def resolve_step(setting: Setting, device: str, tuned_step: bool = False, compile: bool = False) -> StepOptions:
    """Which speed options run for ``setting`` on ``device`` (see the module docstring)."""
    requested = (TUNED_STEP_OPTIONS if tuned_step else ()) + (("compile",) if compile else ())
    on_cuda = torch.device(device).type == "cuda"
    not_applied = []
    if "cudnn_benchmark" in requested and not on_cuda:
        not_applied.append(("cudnn_benchmark", f"CUDA only (cuDNN autotuning); device is {device}"))
    if "fused_adam" in requested:
        if setting.optimizer != "adam":
            not_applied.append(("fused_adam", f"the setting's optimiser is {OPTIMIZER_CLASSES[setting.optimizer]} "
                                              "(bitsandbytes, unchanged), not torch Adam"))
        elif not on_cuda:
            not_applied.append(("fused_adam", f"CUDA only (torch.optim.Adam fused=True); device is {device}"))
    skipped = {name for name, _ in not_applied}
    return StepOptions(requested=requested, applied=tuple(name for name in requested if name not in skipped),
                       not_applied=tuple(not_applied))


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
    step: StepOptions = field(default_factory=StepOptions)

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
            "step": self.step.record(),
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


def resolve(setting: Setting | str, device: str, tuned_step: bool = False, compile: bool = False) -> ResolvedSetting:
    """Decide what ``setting`` runs on ``device`` (see the module docstring); ``tuned_step`` and ``compile`` ask for
    the step's speed options (``StepOptions``; off: the paper's eager step)."""
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
        step=resolve_step(setting, device, tuned_step=tuned_step, compile=compile),
    )


def build_optimizer(
    params: Iterable[torch.nn.Parameter], resolved: ResolvedSetting, lr: float
) -> torch.optim.Optimizer:
    """The setting's optimiser with learning rate ``lr`` and the library defaults (betas 0.9/0.999, eps 1e-8);
    torch Adam with ``fused=True`` where the step's fused_adam option applies."""
    optimizer = resolved.setting.optimizer
    if optimizer == "adam":
        if resolved.step.fused_adam:
            return torch.optim.Adam(params, lr=lr, fused=True)
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


def prepare_model(model: torch.nn.Module, resolved: ResolvedSetting) -> torch.nn.Module:
    """The model on the setting's device in its weight dtype, in channels_last memory format where that option
    applies (4-D parameters such as convolution weights; others are unchanged)."""
    model = model.to(device=resolved.device, dtype=resolved.weight_dtype)
    if resolved.step.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def to_step_format(images: torch.Tensor, resolved: ResolvedSetting) -> torch.Tensor:
    """A batch of images in the memory format the step uses: channels_last for 4-D batches where that option
    applies, else unchanged."""
    if resolved.step.channels_last and images.dim() == 4:
        return images.contiguous(memory_format=torch.channels_last)
    return images


@contextlib.contextmanager
def cudnn_benchmark(resolved: ResolvedSetting):
    """``torch.backends.cudnn.benchmark = True`` inside the block where that option applies; restored after."""
    if not resolved.step.cudnn_benchmark:
        yield
        return
    previous = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = previous
