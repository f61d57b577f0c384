"""Model registry: the paper's models by alias, small models for tests and demos, and any timm model by name.

Every model takes a 1-channel image of ``image_size`` x ``image_size`` and returns one logit per image (shape N x 1).
``image_size`` here is the size the model sees (after any "smaller_input" downsampling).

Pretrained weights: ``pretrained=True`` fetches timm's default weights (Hugging Face Hub), and fails within seconds
when the hub is unreachable; ``pretrained="/path/weights.safetensors"`` (or ``.pth``/``.bin``) loads a local file
through timm, which adapts the RGB stem to one channel (``in_chans=1`` sums the filters over RGB) and drops the
ImageNet classifier.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from pathlib import Path
from typing import Mapping

import torch
from torch import nn

from leanmed.train.registry import MODELS, ModelSpec, get_model_spec
from leanmed.train.weights import verify_cached

__all__ = [
    "ModelSpec",
    "MODELS",
    "MLP",
    "get_model_spec",
    "build_model",
    "count_parameters",
    "has_pretrained_weights",
    "HUB_HOST",
    "PretrainedWeightsUnavailable",
]

logger = logging.getLogger(__name__)

HUB_HOST = "huggingface.co"
HUB_PROBE_TIMEOUT_S = 3.0


def _timm():
    """timm, imported on first use: it pulls in torchvision and, through it, torch._dynamo and sympy (2.6 s of a
    job's start on 2 CPU cores, 2026-11-29), which a job of the MLP never uses."""
    import timm

    return timm


class PretrainedWeightsUnavailable(RuntimeError):
    """Pretrained weights were asked for but cannot be fetched (no network) and are not in the local cache."""


class MLP(nn.Module):
    """Flatten the 1 x s x s image, then Linear + ReLU per hidden width, then Linear to one logit."""

    def __init__(self, image_size: int, hidden: tuple[int, ...], in_chans: int = 1, num_classes: int = 1):
        super().__init__()
        widths = (in_chans * image_size * image_size, *hidden)
        layers: list[nn.Module] = [nn.Flatten()]
        for width_in, width_out in zip(widths[:-1], widths[1:]):
            layers += [nn.Linear(width_in, width_out), nn.ReLU()]
        layers.append(nn.Linear(widths[-1], num_classes))
        self.layers = nn.Sequential(*layers)
        self.image_size = image_size

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.layers(images)


def _timm_kwargs(spec: ModelSpec, image_size: int, overrides: Mapping[str, object]) -> dict:
    kwargs = dict(spec.timm_kwargs)
    if spec.pass_img_size:
        kwargs["img_size"] = image_size
    kwargs.update(overrides)
    return kwargs


def _hub_reachable(timeout_s: float = HUB_PROBE_TIMEOUT_S) -> bool:
    """Whether a TCP connection to the hub opens within ``timeout_s`` (DNS included: the probe runs in a thread)."""
    outcome: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((HUB_HOST, 443), timeout=timeout_s):
                outcome.append(True)
        except OSError:
            outcome.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout_s)
    return bool(outcome and outcome[0])


@contextlib.contextmanager
def _hub_offline():
    """Make huggingface_hub serve only its local cache.

    huggingface_hub reads HF_HUB_OFFLINE once, at import, so setting the environment variable now would do nothing:
    patch the constant instead.
    """
    try:
        from huggingface_hub import constants as hub_constants
    except ImportError:  # no hub client: timm falls back to URLs, which the probe already found unreachable
        yield
        return
    previous = hub_constants.HF_HUB_OFFLINE
    hub_constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        hub_constants.HF_HUB_OFFLINE = previous


def _local_weights_help(name: str) -> str:
    return (
        f"Download the weights of {name!r} on a machine with network access (e.g. "
        f"`huggingface-cli download timm/<weights repo> model.safetensors`, or timm.create_model({name!r}, "
        f"pretrained=True) there and copy the file from ~/.cache/huggingface), then set `pretrained: "
        f"/path/to/model.safetensors` in the config: leanmed loads it with timm.create_model(..., pretrained=True, "
        f"pretrained_cfg_overlay=dict(file=PATH)). Or set `pretrained: false` to train from scratch."
    )


def has_pretrained_weights(name: str) -> bool:
    """True when timm knows pretrained weights for the model (any tag); always False for an MLP."""
    spec = get_model_spec(name)
    return spec.kind == "timm" and bool(_timm().list_pretrained(f"{spec.timm_name}.*"))


def build_model(name: str, image_size: int, pretrained: bool | str | Path = False, **overrides) -> nn.Module:
    """Build model ``name`` for 1-channel ``image_size`` x ``image_size`` inputs and one output logit.

    pretrained: False (random initialisation), True (timm's default weights: from the local Hugging Face cache, or
    downloaded when the hub answers within a few seconds; otherwise PretrainedWeightsUnavailable is raised within
    seconds, with instructions; a model timm has no weights for, like the MLP or vit_base_patch32_plus_256, starts
    from random weights, as in the paper), or a path to a local weights file. ``overrides`` are passed to timm (or, for an MLP,
    may set ``hidden``).
    """
    spec = get_model_spec(name)
    if pretrained not in (True, False, None):
        # A file of the workflow's weights cache (leanmed.train.weights): checked against its manifest before use;
        # a model the cache records as having no ImageNet weights starts from random weights, as with true.
        manifest = verify_cached(pretrained)
        if manifest is not None and not manifest.get("available"):
            pretrained = True
    if pretrained is True and not has_pretrained_weights(name):
        # The paper's protocol: ImageNet weights "where weights existed"; the others start from random weights.
        logger.warning("%s: timm has no pretrained weights for it; random initialisation", name)
        pretrained = False
    if spec.kind == "mlp":
        if pretrained not in (False, None):
            raise ValueError(f"{name}: the MLP has no pretrained weights; set pretrained to false or true")
        hidden = tuple(overrides.pop("hidden", spec.hidden))
        if overrides:
            raise TypeError(f"{name}: unexpected MLP options {sorted(overrides)}")
        return MLP(image_size, hidden)

    kwargs = _timm_kwargs(spec, image_size, overrides)
    kwargs.update(in_chans=1, num_classes=1)
    if pretrained in (False, None):
        return _timm().create_model(spec.timm_name, pretrained=False, **kwargs)
    if pretrained is True:
        return _build_with_default_weights(spec, kwargs)
    weights_path = Path(pretrained).expanduser()
    if not weights_path.is_file():
        raise FileNotFoundError(f"pretrained weights file {str(weights_path)!r} for {name!r} does not exist")
    return _timm().create_model(
        spec.timm_name, pretrained=True, pretrained_cfg_overlay=dict(file=str(weights_path)), **kwargs
    )


def _build_with_default_weights(spec: ModelSpec, kwargs: dict) -> nn.Module:
    started = time.monotonic()
    if _hub_reachable():
        return _timm().create_model(spec.timm_name, pretrained=True, **kwargs)
    # Hub unreachable: only the local cache can help; timm's own retries would take about 46 s to fail.
    try:
        with _hub_offline():
            return _timm().create_model(spec.timm_name, pretrained=True, **kwargs)
    except Exception as error:
        raise PretrainedWeightsUnavailable(
            f"pretrained weights for {spec.alias!r} (timm {spec.timm_name!r}) are not in the local cache and "
            f"{HUB_HOST} is unreachable (checked in {time.monotonic() - started:.1f} s; {type(error).__name__}: "
            f"{error}). {_local_weights_help(spec.timm_name)}"
        ) from error


def count_parameters(name: str, image_size: int, **overrides) -> int:
    """Number of parameters of ``build_model(name, image_size)``, built on the meta device (no memory, fast)."""
    with torch.device("meta"):
        model = build_model(name, image_size, pretrained=False, **overrides)
    return sum(parameter.numel() for parameter in model.parameters())
