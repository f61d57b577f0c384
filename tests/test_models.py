"""Model registry: paper parameter counts (meta device), tiny models' shapes, pretrained handling offline."""

import subprocess
import sys
import time

import pytest
import timm
import torch

from leanmed.train import models
from leanmed.train.models import (
    MODELS,
    PretrainedWeightsUnavailable,
    build_model,
    count_parameters,
    get_model_spec,
    has_pretrained_weights,
)

PAPER_MODELS = [name for name, spec in MODELS.items() if spec.paper_parameters_millions is not None]


def test_registry_has_the_paper_models_and_small_ones():
    assert set(PAPER_MODELS) == {
        "densenet121", "efficientnetv2_rw_m", "swinv2_base_window8_256", "vit_base_patch32_plus_256", "mlp"
    }
    assert {"test_resnet", "test_vit", "test_efficientnet", "test_byobnet", "mlp_small"} <= set(MODELS)


def test_a_job_of_the_mlp_does_not_import_timm():
    """timm imports torchvision (about 0.6-2.6 s of every job's start on 2 CPU cores): only timm models load it."""
    script = (
        "import sys, torch\n"
        "import leanmed.train.job\n"
        "from leanmed.train.models import build_model\n"
        "model = build_model('mlp_small', 32)\n"
        "torch.optim.Adam(model.parameters())\n"
        "print(sorted({'timm', 'torchvision'} & set(sys.modules)))\n"
        "build_model('test_resnet', 32)\n"
        "print(sorted({'timm', 'torchvision'} & set(sys.modules)))\n"
    )
    printed = subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, text=True).stdout
    assert printed.splitlines() == ["[]", "['timm', 'torchvision']"]


@pytest.mark.parametrize("name", PAPER_MODELS)
def test_paper_parameter_counts_on_meta_device(name):
    millions = count_parameters(name, 256) / 1e6
    assert millions == pytest.approx(MODELS[name].paper_parameters_millions, abs=0.1)


def test_mlp_layout_at_256():
    model = build_model("mlp", 256)
    widths = [layer.out_features for layer in model.modules() if isinstance(layer, torch.nn.Linear)]
    assert widths == [128, 64, 32, 16, 1]
    assert model.layers[1].in_features == 65536
    assert count_parameters("mlp", 256) == 65536 * 128 + 128 + 128 * 64 + 64 + 64 * 32 + 32 + 32 * 16 + 16 + 16 + 1


@pytest.mark.parametrize("name", ["test_resnet", "test_vit", "test_efficientnet", "test_byobnet", "mlp_small"])
@pytest.mark.parametrize("size", [32, 64])
def test_small_models_take_one_channel_and_give_one_logit(name, size):
    torch.manual_seed(0)
    model = build_model(name, size).eval()
    with torch.no_grad():
        output = model(torch.rand(2, 1, size, size))
    assert output.shape == (2, 1)


def test_swin_gets_the_input_size():
    spec = get_model_spec("swinv2_base_window8_256")
    assert spec.pass_img_size and spec.timm_kwargs["strict_img_size"] is False
    assert MODELS["vit_base_patch32_plus_256"].timm_kwargs["dynamic_img_size"] is True


def test_any_timm_name_works_and_unknown_names_fail():
    assert get_model_spec("resnet18").timm_name == "resnet18"
    assert count_parameters("resnet18", 64) == pytest.approx(11.17e6, rel=0.01)
    with pytest.raises(KeyError):
        get_model_spec("no_such_model_anywhere")


def test_pretrained_true_offline_fails_fast_with_instructions(monkeypatch, tmp_path):
    # Never download in tests: the hub counts as unreachable and the cache is an empty folder.
    monkeypatch.setattr(models, "_hub_reachable", lambda timeout_s=3.0: False)
    from huggingface_hub import constants as hub_constants

    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path))
    started = time.monotonic()
    with pytest.raises(PretrainedWeightsUnavailable) as raised:
        build_model("test_resnet", 32, pretrained=True)
    assert time.monotonic() - started < 15
    assert "pretrained_cfg_overlay" in str(raised.value) and "pretrained: false" in str(raised.value)


def test_pretrained_local_file_is_loaded_with_rgb_stem_summed(tmp_path):
    torch.manual_seed(0)
    imagenet_like = timm.create_model("test_resnet", pretrained=False)  # 3 channels, 1000 classes
    path = tmp_path / "weights.pth"
    torch.save(imagenet_like.state_dict(), path)
    model = build_model("test_resnet", 32, pretrained=str(path))
    stem_name = next(name for name, _ in model.named_parameters() if name.endswith("weight"))
    saved = imagenet_like.state_dict()[stem_name]
    loaded = model.state_dict()[stem_name]
    assert loaded.shape[1] == 1 and torch.allclose(loaded[:, 0], saved.sum(dim=1), atol=1e-6)
    assert model.eval()(torch.rand(1, 1, 32, 32)).shape == (1, 1)


def test_pretrained_missing_file_and_mlp():
    with pytest.raises(FileNotFoundError):
        build_model("test_resnet", 32, pretrained="/nonexistent/weights.safetensors")
    with pytest.raises(ValueError):  # a weights file for the MLP: there are none to load into it
        build_model("mlp_small", 32, pretrained=__file__)


def test_pretrained_true_falls_back_to_random_weights_where_timm_has_none():
    assert has_pretrained_weights("densenet121")
    assert not has_pretrained_weights("vit_base_patch32_plus_256")
    assert not has_pretrained_weights("mlp")
    model = build_model("mlp_small", 16, pretrained=True)  # no network needed: there is nothing to fetch
    assert sum(parameter.numel() for parameter in model.parameters()) > 0
