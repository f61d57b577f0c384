"""Settings registry and what each setting resolves to on CPU (and, by its rules, on CUDA)."""

import importlib

import pytest
import torch

from leanmed.train import settings as settings_module
from leanmed.train.measure import optimizer_state_bytes
from leanmed.train.settings import (
    PAPER_SETTINGS,
    SETTINGS,
    build_optimizer,
    get_setting,
    make_grad_scaler,
    resolve,
)

# bitsandbytes says so for every paged optimiser on CPU; the resolution notes record it already.
pytestmark = pytest.mark.filterwarnings("ignore:Paged optimizers are not supported on CPU")

ALL_NAMES = ["fp32", "amp", "8bit", "amp_8bit", "half_8bit", "bf16_mixed", "bf16_true", "half", "paged_8bit"]


def test_registry_names_and_paper_flags():
    assert list(SETTINGS) == ALL_NAMES
    assert PAPER_SETTINGS == ("fp32", "amp", "8bit", "amp_8bit", "half_8bit")
    assert dict(get_setting("half_8bit").paper_flags) == {"8bit": True, "amp": False, "half": True}
    assert dict(get_setting("amp_8bit").paper_flags) == {"8bit": True, "amp": True, "half": False}
    with pytest.raises(KeyError):
        get_setting("fp64")


def test_settings_are_frozen_data():
    with pytest.raises(Exception):
        get_setting("fp32").optimizer = "adam8bit"


@pytest.mark.parametrize(
    "name, weight_dtype, autocast_dtype, optimizer_class, bits",
    [
        ("fp32", torch.float32, None, "torch.optim.Adam", 32),
        ("amp", torch.float32, torch.bfloat16, "torch.optim.Adam", 32),
        ("8bit", torch.float32, None, "bitsandbytes.optim.Adam8bit", 8),
        ("amp_8bit", torch.float32, torch.bfloat16, "bitsandbytes.optim.Adam8bit", 8),
        ("half_8bit", torch.float16, None, "bitsandbytes.optim.Adam8bit", 8),
        ("bf16_mixed", torch.float32, torch.bfloat16, "torch.optim.Adam", 32),
        ("bf16_true", torch.bfloat16, None, "torch.optim.Adam", 32),
        ("half", torch.float16, None, "torch.optim.Adam", 32),
        ("paged_8bit", torch.float32, None, "bitsandbytes.optim.PagedAdam8bit", 8),
    ],
)
def test_resolution_on_cpu(name, weight_dtype, autocast_dtype, optimizer_class, bits):
    resolved = resolve(name, "cpu")
    assert resolved.weight_dtype == weight_dtype
    assert resolved.autocast_dtype == autocast_dtype
    assert resolved.grad_scaler is False  # never on CPU
    assert resolved.optimizer_class == optimizer_class and resolved.optimizer_state_bits == bits
    record = resolved.record()
    assert record["device"] == "cpu" and record["name"] == name
    assert record["weight_dtype"] == str(weight_dtype).removeprefix("torch.")


def test_resolution_rules_on_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    amp = resolve("amp", "cuda")
    assert amp.autocast_dtype == torch.float16 and amp.grad_scaler
    assert resolve("amp_8bit", "cuda").grad_scaler
    assert resolve("bf16_mixed", "cuda").autocast_dtype == torch.bfloat16 and not resolve("bf16_mixed", "cuda").grad_scaler
    assert not resolve("half_8bit", "cuda").grad_scaler  # cannot unscale float16 gradients
    assert not resolve("half", "cuda").grad_scaler
    assert not resolve("fp32", "cuda").grad_scaler


@pytest.mark.parametrize("name", ALL_NAMES)
def test_optimizer_class_matches_its_recorded_import_path(name):
    resolved = resolve(name, "cpu")
    parameter = torch.nn.Parameter(torch.zeros(8, 8))
    optimizer = build_optimizer([parameter], resolved, lr=1e-3)
    module_name, class_name = resolved.optimizer_class.rsplit(".", 1)
    assert type(optimizer) is getattr(importlib.import_module(module_name), class_name)
    assert optimizer.param_groups[0]["lr"] == 1e-3
    assert make_grad_scaler(resolved) is None


@pytest.mark.parametrize("name", ["8bit", "paged_8bit", "half_8bit"])
def test_eight_bit_state_is_uint8_for_large_tensors_only(name):
    resolved = resolve(name, "cpu")
    large = torch.nn.Parameter(torch.randn(64, 64, dtype=resolved.weight_dtype))  # 4096 elements: 8-bit
    small = torch.nn.Parameter(torch.randn(63, 64, dtype=resolved.weight_dtype))  # 4032 elements: 32-bit
    optimizer = build_optimizer([large, small], resolved, lr=1e-3)
    large.grad = torch.randn_like(large)
    small.grad = torch.randn_like(small)
    optimizer.step()
    assert optimizer.state[large]["state1"].dtype == torch.uint8
    assert optimizer.state[large]["state2"].dtype == torch.uint8
    assert optimizer.state[small]["state1"].dtype == torch.float32
    assert torch.isfinite(large).all()


def test_eight_bit_state_is_about_two_bytes_per_parameter():
    parameter = torch.nn.Parameter(torch.randn(512, 512))
    sizes = {}
    for name in ("fp32", "8bit"):
        optimizer = build_optimizer([parameter], resolve(name, "cpu"), lr=1e-3)
        parameter.grad = torch.randn_like(parameter)
        optimizer.step()
        sizes[name] = optimizer_state_bytes(optimizer) / parameter.numel()
    assert sizes["fp32"] == pytest.approx(8.0, abs=0.01)
    assert sizes["8bit"] <= 2.05


def test_half_with_torch_adam_goes_nan_and_with_8bit_adam_does_not():
    """The paper's instability, reproduced: Adam's eps=1e-8 is 0 in float16, so zero gradients give 0/0."""
    results = {}
    for name in ("half", "half_8bit"):
        parameter = torch.nn.Parameter(torch.randn(64, 64, dtype=torch.float16))
        optimizer = build_optimizer([parameter], resolve(name, "cpu"), lr=1e-3)
        gradient = torch.randn(64, 64, dtype=torch.float16)
        gradient[0] = 0  # e.g. a dead unit
        parameter.grad = gradient
        optimizer.step()
        results[name] = bool(torch.isfinite(parameter).all())
    assert results == {"half": False, "half_8bit": True}


def test_autocast_context_runs_in_the_resolved_dtype():
    resolved = resolve("amp", "cpu")
    layer = torch.nn.Linear(4, 4)
    with resolved.autocast():
        assert layer(torch.rand(2, 4)).dtype == torch.bfloat16
    with resolve("fp32", "cpu").autocast():
        assert layer(torch.rand(2, 4)).dtype == torch.float32


def test_unknown_device_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError):
        settings_module.resolve_device("cuda")
    assert settings_module.resolve_device("auto") == "cpu"


# --------------------------------------------------------------------------------------------------------------------
# The training step's speed options (training.tuned_step, training.compile)


@pytest.mark.parametrize("name", ALL_NAMES)
def test_the_step_is_the_papers_eager_step_by_default(name):
    resolved = resolve(name, "cpu")
    assert resolved.step == settings_module.StepOptions()
    assert resolved.record()["step"] == {"requested": [], "applied": [], "not_applied": {}, "label": "eager (paper)"}
    model = settings_module.prepare_model(torch.nn.Conv2d(3, 4, 3), resolved)
    assert model.weight.is_contiguous() and not model.weight.is_contiguous(memory_format=torch.channels_last)
    images = torch.rand(2, 1, 8, 8)
    assert settings_module.to_step_format(images, resolved) is images
    if resolved.setting.optimizer == "adam":
        assert not build_optimizer(model.parameters(), resolved, 1e-3).defaults["fused"]


def test_tuned_step_on_cpu_applies_channels_last_only_and_says_why_not_the_rest():
    resolved = resolve("fp32", "cpu", tuned_step=True)
    step = resolved.record()["step"]
    assert step["requested"] == ["channels_last", "cudnn_benchmark", "fused_adam"]
    assert step["applied"] == ["channels_last"] and step["label"] == "tuned (channels_last)"
    assert set(step["not_applied"]) == {"cudnn_benchmark", "fused_adam"}
    assert all("CUDA only" in reason and "cpu" in reason for reason in step["not_applied"].values())
    model = settings_module.prepare_model(torch.nn.Conv2d(3, 4, 3), resolved)
    assert model.weight.is_contiguous(memory_format=torch.channels_last)
    images = settings_module.to_step_format(torch.rand(2, 3, 8, 8), resolved)
    assert images.is_contiguous(memory_format=torch.channels_last) and not images.is_contiguous()
    assert not build_optimizer(model.parameters(), resolved, 1e-3).defaults["fused"]
    previous = torch.backends.cudnn.benchmark
    with settings_module.cudnn_benchmark(resolved):
        assert torch.backends.cudnn.benchmark == previous  # not applied on CPU: left alone


def test_tuned_step_rules_on_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    fp32 = resolve("fp32", "cuda", tuned_step=True)
    assert fp32.step.applied == ("channels_last", "cudnn_benchmark", "fused_adam") and not fp32.step.not_applied
    assert fp32.step.label == "tuned (channels_last, cudnn.benchmark, fused Adam)"
    eight_bit = resolve("amp_8bit", "cuda", tuned_step=True, compile=True)
    assert eight_bit.step.applied == ("channels_last", "cudnn_benchmark", "compile")
    assert "bitsandbytes" in dict(eight_bit.step.not_applied)["fused_adam"]
    previous = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = False
    try:
        with settings_module.cudnn_benchmark(fp32):
            assert torch.backends.cudnn.benchmark is True
        assert torch.backends.cudnn.benchmark is False  # restored after the job
    finally:
        torch.backends.cudnn.benchmark = previous


def test_fused_adam_is_built_where_it_applies(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    resolved = resolve("fp32", "cuda", tuned_step=True)
    built = {}
    monkeypatch.setattr(torch.optim, "Adam", lambda params, **kwargs: built.update(kwargs) or "adam")
    assert build_optimizer([torch.nn.Parameter(torch.zeros(2))], resolved, 1e-3) == "adam"
    assert built == {"lr": 1e-3, "fused": True}


def test_report_knows_the_step_option_names():
    from leanmed.report.captions import STEP_OPTION_NAMES

    assert STEP_OPTION_NAMES == dict(settings_module.STEP_OPTIONS)
    assert set(settings_module.TUNED_STEP_OPTIONS) < set(STEP_OPTION_NAMES)
