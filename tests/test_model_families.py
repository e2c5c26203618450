"""Models from the ecosystem by name (``hf:``, ``timm:``, ``torchvision:``): tiny, offline, no downloads."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from trakscope.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from trakscope.data import Dataset, ImageSplit, TensorImages
from trakscope.models import WeightsError, build_model, model_preprocessing, resolve_config
from trakscope.models.calling import call_model
from trakscope.train import load_trained, predict_logits, train_model

from .conftest import HF_MEAN as MEAN
from .conftest import HF_SIZE as SIZE
from .conftest import HF_STD as STD

transformers = pytest.importorskip("transformers")

ABSENT_HUB_ID = "trakscope-tests/no-such-model"


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """Empty Hugging Face and torch hub caches; the hub offline."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "torch-hub"))
    return tmp_path


def test_hf_model_gets_a_head_for_our_classes_and_keeps_its_backbone(hf_dir):
    from safetensors.torch import load_file

    cfg = ModelConfig(name=f"hf:{hf_dir}", weights="pretrained")
    model = build_model(cfg, 3, classes=["cat", "dog", "eel"]).eval()
    assert call_model(model, torch.randn(2, 3, 32, 32)).shape == (2, 3)
    assert model.config.id2label == {0: "cat", 1: "dog", 2: "eel"}
    saved = load_file(str(hf_dir / "model.safetensors"))
    key = "resnet.embedder.embedder.convolution.weight"
    assert torch.equal(model.state_dict()[key], saved[key])


def test_hf_random_weights_come_from_the_config_alone(hf_dir, tmp_path):
    import shutil

    only_config = tmp_path / "config-only"
    shutil.copytree(hf_dir, only_config, ignore=shutil.ignore_patterns("*.safetensors"))
    random = build_model(ModelConfig(name=f"hf:{only_config}"), 3)
    pretrained = build_model(ModelConfig(name=f"hf:{hf_dir}", weights="pretrained"), 3)
    assert {k: v.shape for k, v in random.state_dict().items()} == {
        k: v.shape for k, v in pretrained.state_dict().items()}


def test_hf_preprocessing_comes_from_the_processor_config(hf_dir):
    pre = model_preprocessing(ModelConfig(name=f"hf:{hf_dir}"))
    assert (pre.size, pre.mean, pre.std) == (SIZE, MEAN, STD)
    cfg = resolve_config(RunConfig(model=ModelConfig(name=f"hf:{hf_dir}")))
    assert (cfg.data.image_size, cfg.data.mean, cfg.data.std) == (SIZE, MEAN, STD)
    small = resolve_config(RunConfig(data=DataConfig(image_size=32), model=ModelConfig(name=f"hf:{hf_dir}")))
    assert (small.data.image_size, small.data.mean) == (32, MEAN)


@pytest.mark.parametrize("weights", ["random", "pretrained"])
@pytest.mark.parametrize("where", ["hub id", "folder"])
def test_hf_model_not_on_this_machine_names_download(offline, weights, where):
    spec = ABSENT_HUB_ID if where == "hub id" else str(offline / "absent-folder")
    cfg = ModelConfig(name=f"hf:{spec}", weights=weights)
    with pytest.raises(WeightsError, match="--download") as err:
        build_model(cfg, 3)
    assert "\n" not in str(err.value)
    with pytest.raises(WeightsError, match="--download"):
        resolve_config(RunConfig(model=cfg))


def test_timm_model_builds_with_our_classes():
    pytest.importorskip("timm")
    model = build_model(ModelConfig(name="timm:resnet18"), 4).eval()
    assert call_model(model, torch.randn(2, 3, 32, 32)).shape == (2, 4)
    with pytest.raises(ValueError, match="unknown timm model"):
        build_model(ModelConfig(name="timm:no_such_net"), 4)


def test_timm_pretrained_weights_come_from_a_local_cache_only(offline):
    timm = pytest.importorskip("timm")
    cfg = ModelConfig(name="timm:resnet18", weights="pretrained")
    with pytest.raises(WeightsError, match="--download"):
        build_model(cfg, 4)
    url = timm.models.get_pretrained_cfg("resnet18").url
    cached = offline / "torch-hub" / "checkpoints" / url.rsplit("/", 1)[1]
    cached.parent.mkdir(parents=True)
    state = timm.create_model("resnet18", pretrained=False).state_dict()  # stands in for the 1000-class file
    torch.save(state, cached)
    model = build_model(cfg, 4)
    assert torch.equal(model.state_dict()["conv1.weight"], state["conv1.weight"])
    assert model.fc.out_features == 4


def test_torchvision_model_builds_with_our_classes():
    model = build_model(ModelConfig(name="torchvision:mobilenet_v3_small"), 4).eval()
    assert call_model(model, torch.randn(2, 3, 32, 32)).shape == (2, 4)
    assert model_preprocessing(ModelConfig(name="torchvision:mobilenet_v3_small")).mean == (0.485, 0.456, 0.406)


def test_torchvision_pretrained_weights_come_from_the_hub_cache_only(offline):
    from torchvision.models import MobileNet_V3_Small_Weights, mobilenet_v3_small

    cfg = ModelConfig(name="torchvision:mobilenet_v3_small", weights="imagenet")
    with pytest.raises(WeightsError, match="--download"):
        build_model(cfg, 4)
    cached = offline / "torch-hub" / "checkpoints" / MobileNet_V3_Small_Weights.DEFAULT.url.rsplit("/", 1)[1]
    cached.parent.mkdir(parents=True)
    state = mobilenet_v3_small(weights=None).state_dict()  # stands in for the ImageNet file: 1000 classes
    torch.save(state, cached)
    model = build_model(cfg, 4)
    assert torch.equal(model.state_dict()["features.0.0.weight"], state["features.0.0.weight"])
    assert model.classifier[-1].out_features == 4


def _tiny_dataset(n_train: int = 24, n_eval: int = 8, size: int = 32) -> Dataset:
    """Two classes told apart by brightness, in memory."""
    gen = torch.Generator().manual_seed(0)

    def split(n: int) -> ImageSplit:
        labels = np.arange(n) % 2
        base = torch.randint(0, 100, (n, 3, size, size), generator=gen)
        images = (base + torch.as_tensor(labels).view(n, 1, 1, 1) * 150).to(torch.uint8)
        return ImageSplit(TensorImages(images), labels, labels.copy(), [str(i) for i in range(n)])

    return Dataset("tiny", ["dark", "bright"], split(n_train), split(n_eval), split(n_eval)).normalized(MEAN, STD)


def test_hf_model_trains_and_its_checkpoint_reloads_without_the_pretrained_file(hf_dir, tmp_path):
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(hf_dir, folder)
    cfg = ModelConfig(name=f"hf:{folder}", weights="pretrained")
    train_cfg = TrainConfig(epochs=1, batch_size=8, lr=0.05, augment=True)
    dataset = _tiny_dataset()
    states = train_model(cfg, train_cfg, dataset, seed=0, progress=False)
    assert len(states) == 1
    (folder / "model.safetensors").unlink()  # load_trained must not need the pretrained weights
    net = load_trained(cfg, 2, states[-1])
    logits = predict_logits(net, dataset.test.images)
    assert logits.shape == (8, 2) and np.isfinite(logits).all()
    assert not net.training
