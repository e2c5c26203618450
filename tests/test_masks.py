"""DropConnect masks every linear map's weight: ``nn.MultiheadAttention``'s own in-projection weights as well as the
``nn.Linear`` / ``nn.Conv*`` modules' (the rest of the rule is tested in ``test_pipeline.py``)."""

from __future__ import annotations

import torch
from torch import nn

from trakscope import dropconnect
from trakscope.attribution.masks import masked_weights


class Attend(nn.Module):
    """A packed-q/k/v attention (torchvision's ViT builds on it) and one with keys and values of their own width."""

    def __init__(self) -> None:
        super().__init__()
        self.packed = nn.MultiheadAttention(16, 2)
        self.separate = nn.MultiheadAttention(16, 2, kdim=8, vdim=8)
        self.head = nn.Linear(16, 3)


def test_multihead_attention_in_projections_are_masked_and_its_biases_kept():
    net = Attend()
    assert masked_weights(net) == ["packed.in_proj_weight", "packed.out_proj.weight", "separate.q_proj_weight",
                                   "separate.k_proj_weight", "separate.v_proj_weight", "separate.out_proj.weight",
                                   "head.weight"]
    state = net.state_dict()
    out = dropconnect(state, 0.3, seed=(0, 0, 0), weights=net)
    zeroed = (out["packed.in_proj_weight"] == 0).float().mean().item()
    assert 0.25 < zeroed < 0.35  # 768 weights, p 0.3: SE of the fraction ~0.017
    for name in ("packed.in_proj_bias", "separate.in_proj_bias", "packed.out_proj.bias", "head.bias"):
        assert torch.equal(out[name], state[name]), name
