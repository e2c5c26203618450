"""The Kronecker projector checks itself: on its first batch each layer's summed block must equal the projection
of autograd's batch gradient; a layer that fails is computed exactly, and the store records which.

The two patterns of issue 18 whose blocks were silently wrong are reproduced (a Linear whose input is a learned
parameter: timm's attention-pool latent query; a weight used outside its own module's forward) and checked block
by block against a for-loop of per-example autograd gradients (``kron_reference``).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from trakscope.attribution.kronecker import KroneckerProjector
from trakscope.attribution.selfcheck import TOLERANCE, check_layers
from trakscope.attribution.store import StoreError, TrakStore
from trakscope.attribution.trak import TRAK
from trakscope.models import TinyCNN

from .kron_reference import assert_blocks_match, reference_features


def _vit_attention_pool() -> nn.Module:
    """timm's ``vit_tiny_patch16_224`` with ``global_pool='map'``, built tiny (32 px, one block, width 16)."""
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, global_pool="map", img_size=32, patch_size=8,
                             depth=1, embed_dim=16, num_heads=2, num_classes=3).eval()


class ParentLinear(nn.Module):
    """``emb`` is called as a Linear, and its weight is applied once more by the parent with ``F.linear``."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.inp, self.emb, self.head = nn.Linear(12, 6), nn.Linear(6, 6), nn.Linear(6, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.emb(torch.tanh(self.inp(x.flatten(1)))))
        return self.head(torch.tanh(F.linear(h, self.emb.weight)))


class Unbatchable(ParentLinear):
    """The same, calling ``.item()``: torch.func cannot vmap it, so the exact path goes example by example."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sign = 1.0 if x.abs().max().item() >= 0 else -1.0
        return sign * super().forward(x)


class TiedTokens(nn.Module):
    """Dict inputs ``{"ids": [b, 6]}``: an Embedding whose table also reads out the logits (``F.linear``)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed, self.norm = nn.Embedding(11, 5), nn.LayerNorm(5)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.linear(self.norm(self.embed(ids).mean(1)), self.embed.weight[:4])


def _images(b: int = 5, size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return torch.randn(b, 3, size, size, generator=gen), torch.arange(b) % 3


CASES = {
    "vit_map_latent_query": (_vit_attention_pool, lambda: _images(), ["attn_pool.q"]),
    "parent_f_linear": (ParentLinear, lambda: (torch.randn(5, 12), torch.tensor([0, 1, 2, 3, 0])), ["emb"]),
    "unbatchable_parent": (Unbatchable, lambda: (torch.randn(3, 12), torch.tensor([3, 1, 2])), ["emb"]),
    "tied_embedding_dict": (TiedTokens, lambda: ({"ids": torch.randint(0, 11, (4, 6))}, torch.tensor([0, 3, 1, 2])),
                            ["embed"]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_failing_layers_are_found_and_computed_exactly(case: str):
    """The check names exactly the layer whose block is wrong, and the features then match per-example autograd."""
    make, data, wrong = CASES[case]
    model = make()
    inputs, labels = data()
    proj = KroneckerProjector(model, 0, seed=0, k_in=4, k_out=4)
    with pytest.warns(UserWarning, match="computed exactly"):
        feats, _ = proj(inputs, labels)
    assert [e["layer"] for e in proj.check["exact"]] == wrong
    assert all(e["error"] > 0.1 for e in proj.check["exact"]) and proj.check["max_error"] < 1e-5
    assert proj.check["exact"][0]["params"] == [n for n, p in model.get_submodule(wrong[0]).named_parameters()]
    assert_blocks_match(proj, feats, reference_features(proj, inputs, labels))
    alone = KroneckerProjector(model, 0, seed=0, k_in=4, k_out=4)  # the probe projected again (as under bf16, TF32)
    with pytest.warns(UserWarning, match="computed exactly"):
        again = alone.self_check(inputs, labels)
    assert [e["layer"] for e in again["exact"]] == wrong and again["max_error"] < 1e-5


def test_a_model_that_passes_gets_the_same_features_bit_for_bit():
    """Every layer of a model the kinds cover passes, within float32 rounding, and the check changes nothing."""
    torch.manual_seed(0)
    model = TinyCNN(10).eval()
    images, labels = torch.randn(6, 3, 12, 12), torch.tensor([0, 4, 9, 1, 1, 2])
    checked = KroneckerProjector(model, 96, seed=3, k_in=4, k_out=4)
    got = checked(images, labels)[0]
    assert checked.check["exact"] == [] and checked.check["layers"] == len(checked.layers)
    assert 0 < checked.check["max_error"] < 1e-5 and checked.check["probe"] == 4
    unchecked = KroneckerProjector(model, 96, seed=3, k_in=4, k_out=4)
    unchecked.adopt({"exact": []})  # as if a store had recorded a passing check
    assert torch.equal(got, unchecked(images, labels)[0])
    again = KroneckerProjector(model, 96, seed=3, k_in=4, k_out=4)
    again(images, labels)
    assert again.check == checked.check  # deterministic


def test_tolerance_separates_rounding_from_a_wrong_block():
    """A block 1% off fails; one off by float32 rounding (1e-6) passes."""
    model = ParentLinear().eval()
    x, y = torch.randn(4, 12), torch.tensor([0, 1, 2, 3])
    proj = KroneckerProjector(model, 0, seed=0, k_in=4, k_out=4)
    feats = reference_features(proj, x, y)
    grads = [g for layer in proj.layers for g in _batch_grads(model, layer.params, x, y)]
    head = proj.layers[-1].block
    for scale, fails in ((1 + 1e-2, True), (1 + 1e-6, False)):
        off = feats.clone()
        off[:, head] *= scale
        assert ("head" in check_layers(proj.layers, off, grads, 4).failed) is fails
    assert 1e-6 < TOLERANCE < 1e-2


def _batch_grads(model: nn.Module, params: list, x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
    from trakscope.attribution.output import margin

    return list(torch.autograd.grad(margin(model(x), y).sum(), params))


def test_the_store_records_the_check_and_later_projectors_adopt_it(tmp_path, monkeypatch):
    """The first featurization of a checkpoint records its check in ``checkpoints.json``; later splits of that
    checkpoint adopt it without checking again and compute the same layers exactly."""
    model = ParentLinear()
    x, y = torch.randn(10, 12), torch.arange(10) % 4
    trak = TRAK(model, tmp_path / "store", proj_dim=0, kron_k=4, progress=False)
    with pytest.warns(UserWarning, match="computed exactly"):
        trak.featurize([(x[:6], y[:6]), (x[6:], y[6:])], split="train", n=10)
    store = TrakStore(tmp_path / "store")
    check = store.kronecker_check(0)
    assert [e["layer"] for e in check["exact"]] == ["emb"] and check["probe"] == 4
    assert store.kronecker_exact() == {"0": ["emb"]}

    def no_second_check(self, inputs, labels):
        raise AssertionError("checked again")

    monkeypatch.setattr(KroneckerProjector, "self_check", no_second_check)
    trak.featurize([(x[:4], y[:4])], split="test", n=4)
    proj = trak._projector(0)
    assert proj.check == check and [layer.name for layer in proj.exact_layers] == ["emb"]
    test_feats = trak._split_features(0, "test")[0]
    assert_blocks_match(proj, torch.from_numpy(test_feats.copy()), reference_features(proj, x[:4], y[:4]))
    store.record_kronecker_check(0, {"exact": "emb"})  # not a list of layers: named, not trusted
    with pytest.raises(StoreError, match="damaged Kronecker self-check for checkpoint 0"):
        trak._projector(0)


def test_a_check_naming_an_unknown_layer_is_refused():
    proj = KroneckerProjector(ParentLinear().eval(), 0, seed=0, k_in=4, k_out=4)
    with pytest.raises(ValueError, match="does not have"):
        proj.adopt({"exact": [{"layer": "decoder", "params": ["weight"], "error": 1.0}]})
