"""The study's two registries as plain data: models (paper aliases -> timm names) and settings (what each changes).

Kept free of torch and timm imports so that the workflow can check a configuration and build its plan in well under a
second; ``leanmed.train.models`` and ``leanmed.train.settings`` build and run what these entries describe. Adding a
model or a setting is one entry here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping

__all__ = [
    "ModelSpec",
    "MODELS",
    "get_model_spec",
    "is_known_model",
    "model_definition",
    "Setting",
    "SETTINGS",
    "PAPER_SETTINGS",
    "get_setting",
    "setting_definition",
]


# ---------------------------------------------------------------- models
@dataclass(frozen=True)
class ModelSpec:
    """One registry entry.

    kind: "timm" (built by ``timm.create_model(timm_name, **timm_kwargs)``) or "mlp" (the ``MLP`` below).
    timm_kwargs: extra keyword arguments for timm (e.g. ``dynamic_img_size=True`` so a ViT accepts any input size).
    pass_img_size: give timm ``img_size=image_size`` (models whose layers are sized for the input, e.g. Swin).
    hidden: hidden layer widths of an MLP.
    paper_parameters_millions: parameter count the paper reports (1 input channel, 1 output), for checks.
    """

    alias: str
    kind: str
    description: str
    timm_name: str | None = None
    timm_kwargs: Mapping[str, object] = field(default_factory=lambda: MappingProxyType({}))
    pass_img_size: bool = False
    hidden: tuple[int, ...] = ()
    paper_parameters_millions: float | None = None


def _frozen(**kwargs) -> Mapping[str, object]:
    return MappingProxyType(dict(kwargs))


MODELS: Mapping[str, ModelSpec] = MappingProxyType(
    {
        spec.alias: spec
        for spec in (
            ModelSpec(
                "densenet121", "timm", "DenseNet-121 (the paper's DenseNet)", "densenet121",
                paper_parameters_millions=6.9,
            ),
            ModelSpec(
                "efficientnetv2_rw_m", "timm", "EfficientNetV2-M, timm's variant (the paper's EfficientNet)",
                "efficientnetv2_rw_m", paper_parameters_millions=51.1,
            ),
            ModelSpec(
                "swinv2_base_window8_256", "timm", "Swin Transformer V2 base, window 8 (the paper's Swin)",
                "swinv2_base_window8_256", _frozen(strict_img_size=False), pass_img_size=True,
                paper_parameters_millions=86.9,
            ),
            ModelSpec(
                "vit_base_patch32_plus_256", "timm", "ViT-B/32+ at 256 (the paper's ViT)", "vit_base_patch32_plus_256",
                _frozen(dynamic_img_size=True), paper_parameters_millions=116.7,
            ),
            ModelSpec(
                "mlp", "mlp", "MLP on the flattened image, hidden 128-64-32-16, ReLU (the paper's MLP)",
                hidden=(128, 64, 32, 16), paper_parameters_millions=8.4,
            ),
            ModelSpec("test_resnet", "timm", "timm's tiny test ResNet (tests, demo)", "test_resnet"),
            ModelSpec("test_vit", "timm", "timm's tiny test ViT (tests, demo)", "test_vit",
                      _frozen(dynamic_img_size=True)),
            ModelSpec("test_efficientnet", "timm", "timm's tiny test EfficientNet (tests)", "test_efficientnet"),
            # The demo's CNN: learns the demo's calcifications from a few hundred 32-pixel images, where the tiny
            # EfficientNet's lagging batch-norm statistics keep it at one class, and trains in half precision on a
            # CPU in less than half test_resnet's time (fp16 convolutions are 10-15x slower than fp32 on a CPU).
            ModelSpec("test_byobnet", "timm", "timm's tiny test ByobNet, a ResNet-style CNN (demo)", "test_byobnet"),
            ModelSpec("mlp_small", "mlp", "small MLP, hidden 64-32, ReLU (tests, demo)", hidden=(64, 32)),
        )
    }
)


def get_model_spec(name: str) -> ModelSpec:
    """Registry entry of ``name``; any other timm model name gets a plain timm entry (no extra kwargs)."""
    if name in MODELS:
        return MODELS[name]
    import timm  # only for names that are not aliases: importing timm takes seconds

    if timm.is_model(name):
        return ModelSpec(name, "timm", f"timm model {name}", name)
    raise KeyError(f"unknown model {name!r}: not a registry alias ({sorted(MODELS)}) nor a timm model name")


def model_definition(name: str) -> dict:
    """The registry entry of a model as a plain dict (for Snakemake's params trigger)."""
    spec = get_model_spec(name)
    return {key: (dict(value) if isinstance(value, Mapping) else value) for key, value in vars(spec).items()}


def is_known_model(name: str) -> bool:
    """True for a registry alias or a timm model name."""
    try:
        get_model_spec(name)
    except KeyError:
        return False
    return True


# ---------------------------------------------------------------- settings
@dataclass(frozen=True)
class Setting:
    """One training setting.

    paper_flags: the paper's three switches {"8bit", "amp", "half"}.
    weight_dtype: dtype of the model's parameters (and of its inputs): "float32", "float16" or "bfloat16".
    autocast: whether forward passes run under torch.autocast.
    autocast_dtype: "device" (float16 on CUDA, bfloat16 on CPU: the paper's AMP) or a fixed "bfloat16"/"float16".
    optimizer: "adam" (torch.optim.Adam), "adam8bit" (bitsandbytes Adam8bit) or "paged_adam8bit" (PagedAdam8bit).
    """

    name: str
    description: str
    paper_flags: Mapping[str, bool]
    weight_dtype: str = "float32"
    autocast: bool = False
    autocast_dtype: str = "device"
    optimizer: str = "adam"
    in_paper: bool = False


def _flags(eight_bit: bool, amp: bool, half: bool) -> Mapping[str, bool]:
    return MappingProxyType({"8bit": eight_bit, "amp": amp, "half": half})


SETTINGS: Mapping[str, Setting] = MappingProxyType(
    {
        setting.name: setting
        for setting in (
            Setting("fp32", "baseline: float32 weights and compute, torch Adam", _flags(False, False, False),
                    in_paper=True),
            Setting("amp", "automatic mixed precision (float16 autocast + GradScaler on CUDA), torch Adam",
                    _flags(False, True, False), autocast=True, in_paper=True),
            Setting("8bit", "float32 weights, bitsandbytes 8-bit Adam", _flags(True, False, False),
                    optimizer="adam8bit", in_paper=True),
            Setting("amp_8bit", "automatic mixed precision and bitsandbytes 8-bit Adam", _flags(True, True, False),
                    autocast=True, optimizer="adam8bit", in_paper=True),
            Setting("half_8bit", "float16 weights and compute, bitsandbytes 8-bit Adam", _flags(True, False, True),
                    weight_dtype="float16", optimizer="adam8bit", in_paper=True),
            Setting("bf16_mixed", "bfloat16 autocast on every device (no scaler), float32 weights, torch Adam",
                    _flags(False, True, False), autocast=True, autocast_dtype="bfloat16"),
            Setting("bf16_true", "bfloat16 weights and compute, torch Adam", _flags(False, False, True),
                    weight_dtype="bfloat16"),
            Setting("half", "float16 weights and compute with torch Adam: the combination the paper found unstable "
                    "(Adam's eps=1e-8 is 0 in float16, so zero-gradient entries become 0/0 = NaN)",
                    _flags(False, False, True), weight_dtype="float16"),
            Setting("paged_8bit", "float32 weights, bitsandbytes paged 8-bit Adam (state in paged memory on CUDA)",
                    _flags(True, False, False), optimizer="paged_adam8bit"),
        )
    }
)

PAPER_SETTINGS: tuple[str, ...] = tuple(name for name, setting in SETTINGS.items() if setting.in_paper)


def get_setting(name: str) -> Setting:
    try:
        return SETTINGS[name]
    except KeyError:
        raise KeyError(f"unknown setting {name!r}; known: {sorted(SETTINGS)}") from None


def setting_definition(name: str) -> dict:
    """The registry entry of a setting as a plain dict (for records and for Snakemake's params trigger)."""
    setting = get_setting(name)
    return {key: (dict(value) if isinstance(value, Mapping) else value) for key, value in vars(setting).items()}
