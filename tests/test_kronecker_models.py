"""Both projectors on the models people bring: Hugging Face, timm and torchvision classifiers, in-place
activations, token models with dict inputs and ``.logits`` outputs, frozen backbones, a custom output.

Each Kronecker case is checked block by block (relative error <= 1e-5) against a for-loop of autograd
per-example gradients projected by the layers' own matrices; each dense case against the same loop projected
by the dense matrix. Inputs are tiny (16-32 px, batch 2-3), so each test takes seconds.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from torch import nn

from trakscope.attribution.dense import DenseProjector
from trakscope.attribution.fallback import FallbackLayer
from trakscope.attribution.kronecker import KroneckerProjector
from trakscope.attribution.norms import BatchNormActLayer
from trakscope.attribution.output import Margin, margin
from trakscope.attribution.projectors import make_projector

from .kron_reference import check_against_reference, loop_grads, reference_features


def _with_running_stats(model: nn.Module, seed: int = 0) -> nn.Module:
    """``model`` in eval mode with non-trivial BatchNorm running statistics and affine parameters, as after training."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(torch.rand(m.num_features, generator=gen) * 0.4 - 0.2)
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                if m.affine:
                    m.weight.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                    m.bias.copy_(torch.rand(m.num_features, generator=gen) * 0.2 - 0.1)
    return model.eval()


def _hf_resnet(tmp_path) -> nn.Module:
    from transformers import ResNetConfig, ResNetForImageClassification

    torch.manual_seed(0)
    config = ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic", num_labels=5)
    ResNetForImageClassification(config).save_pretrained(tmp_path / "hf")
    return _with_running_stats(ResNetForImageClassification.from_pretrained(tmp_path / "hf"))


def test_hugging_face_resnet_from_pretrained_with_dict_inputs(tmp_path):
    model = _hf_resnet(tmp_path)
    inputs, labels = {"pixel_values": torch.randn(2, 3, 32, 32)}, torch.tensor([1, 4])
    check_against_reference(KroneckerProjector(model, 0, seed=0, k_in=4, k_out=4), inputs, labels)


@pytest.mark.parametrize("name", ["test_resnet", "test_efficientnet"])
def test_timm_models(name: str):
    """timm's ResNet (plain BatchNorm2d) and EfficientNet (BatchNormAct2d, whose activation follows the norm inside
    the module, so its gradient is taken before the activation; depthwise and SE convolutions)."""
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = _with_running_stats(timm.create_model(name, pretrained=False, num_classes=5))
    proj = KroneckerProjector(model, 0, seed=0, k_in=4, k_out=4)
    check_against_reference(proj, torch.randn(2, 3, 32, 32), torch.tensor([0, 3]))
    assert not any(isinstance(layer, FallbackLayer) for layer in proj.layers)
    if name == "test_efficientnet":
        assert any(isinstance(layer, BatchNormActLayer) for layer in proj.layers)


def test_torchvision_mobilenet_v3_small():
    from torchvision.models import mobilenet_v3_small

    torch.manual_seed(0)
    model = _with_running_stats(mobilenet_v3_small(num_classes=10))
    proj = KroneckerProjector(model, 0, seed=0, k_in=4, k_out=4)
    assert not any(isinstance(layer, FallbackLayer) for layer in proj.layers)
    check_against_reference(proj, torch.randn(2, 3, 32, 32), torch.tensor([3, 9]))


def _vgg() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(4, 4, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(64, 10),
        nn.ReLU(inplace=True),
        nn.Linear(10, 5),
    ).eval()


def test_first_conv_followed_by_inplace_relu_is_not_zero():
    """VGG/AlexNet: the first layer's input needs no gradient and its output is rebased by ReLU(inplace=True).
    The old hook-on-the-output-tensor rooted the backward at the rebased tensor and left this block all zero."""
    proj = KroneckerProjector(_vgg(), 0, seed=0, k_in=4, k_out=4)
    got = check_against_reference(proj, torch.randn(3, 3, 8, 8), torch.tensor([0, 4, 2]))
    assert got[:, proj.layers[0].block].abs().min() > 0


@dataclass
class Output:
    """A Hugging Face-like model output."""

    logits: torch.Tensor


class TokenClassifier(nn.Module):
    """Embedding + positions + LayerNorm + Conv1d + attention + a layer scale: ``input_ids`` -> ``.logits``."""

    def __init__(self, vocab: int = 13, dim: int = 6, classes: int = 4):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim, padding_idx=0)
        self.positions = nn.Parameter(0.1 * torch.randn(1, 5, dim))  # on the root module: the fallback
        self.norm = nn.LayerNorm(dim)
        self.conv = nn.Conv1d(dim, dim, 3, padding=1)
        self.attn = nn.MultiheadAttention(dim, 2, batch_first=True)
        self.head = nn.Linear(dim, classes)

    def forward(self, input_ids: torch.Tensor, mask: torch.Tensor) -> Output:
        h = self.norm(self.embed(input_ids) + self.positions)
        h = torch.relu(self.conv(h.transpose(1, 2))).transpose(1, 2)
        h = h + self.attn(h, h, h, need_weights=False)[0]
        return Output(self.head((h * mask.unsqueeze(-1)).sum(1)))


def _tokens() -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    ids = torch.tensor([[1, 5, 7, 0, 0], [2, 2, 9, 12, 3], [4, 0, 8, 8, 1]])
    return {"input_ids": ids, "mask": (ids != 0).float()}, torch.tensor([1, 0, 3])


def test_token_model_dict_inputs_and_logits_output_in_both_projectors():
    torch.manual_seed(0)
    model = TokenClassifier().eval()
    inputs, labels = _tokens()
    kron = KroneckerProjector(model, 0, seed=0, k_in=3, k_out=3)
    check_against_reference(kron, inputs, labels)
    dense = DenseProjector(model, 16, seed=0)
    _check_dense(dense, inputs, labels)


def _check_dense(dense: DenseProjector, inputs, labels) -> None:
    named = dict(dense.model.named_parameters())
    params = [named[name] for name in dense.params]
    want = torch.stack([torch.cat([g.flatten() for g in row]) for row in
                        loop_grads(dense.model, params, inputs, labels, dense.output)])
    flat, _ = dense.per_example_grads(inputs, labels)
    torch.testing.assert_close(flat, want, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(dense(inputs, labels)[0], dense.project(want), rtol=1e-4, atol=1e-5)


def test_frozen_backbone_is_excluded_alike_by_both_projectors():
    """Fine-tuning a head on a frozen backbone: the first trainable layer's input needs no gradient (here a BatchNorm
    whose output the residual ``out += identity`` then modifies in place)."""
    from torchvision.models import resnet18

    torch.manual_seed(0)
    model = _with_running_stats(resnet18(num_classes=10)).requires_grad_(False)
    model.layer4[1].bn2.requires_grad_(True)
    model.fc.requires_grad_(True)
    images, labels = torch.randn(2, 3, 16, 16), torch.tensor([2, 7])
    kron = KroneckerProjector(model, 32, seed=0, k_in=4, k_out=4)
    dense = DenseProjector(model, 32, seed=0)
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    named = dict(model.named_parameters())
    assert {id(p) for layer in kron.layers for p in layer.params} == trainable == {id(named[n]) for n in dense.params}
    assert kron.dim == dense.dim == 32 and dense.num_params == sum(p.numel() for p in model.parameters()
                                                                   if p.requires_grad)
    check_against_reference(kron, images, labels)
    _check_dense(dense, images, labels)


class ClassMargin(Margin):
    """The margin of one chosen class, whatever the label (attributes "why class c")."""

    def __init__(self, target: int):
        self.target = target

    def __call__(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return margin(logits, torch.full_like(labels, self.target))


def test_custom_model_output_changes_features_consistently():
    torch.manual_seed(0)
    model, (inputs, labels) = TokenClassifier().eval(), _tokens()
    custom = make_projector("kronecker", model, 0, seed=0, kron_k=3, output=ClassMargin(2))
    default = make_projector("kronecker", model, 0, seed=0, kron_k=3)
    got = check_against_reference(custom, inputs, labels)
    torch.testing.assert_close(got, reference_features(default, inputs, torch.full_like(labels, 2)),
                               rtol=1e-4, atol=1e-6)
    assert (got - default(inputs, labels)[0]).abs().max() > 1e-3
    dense = make_projector("dense", model, 16, seed=0, output=ClassMargin(2))
    _check_dense(dense, inputs, labels)
    as_label_2 = DenseProjector(model, 16, 0)(inputs, torch.full_like(labels, 2))[0]
    torch.testing.assert_close(dense(inputs, labels)[0], as_label_2, rtol=1e-5, atol=1e-6)
