import numpy as np
import torch

from trakscope.attribution.output import margin, out_to_loss


def test_margin_is_log_odds_of_the_label():
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.0, 0.0, 0.0]])
    labels = torch.tensor([0, 2])
    p = torch.softmax(logits, 1)[torch.arange(2), labels]
    assert torch.allclose(margin(logits, labels), torch.log(p / (1 - p)), atol=1e-6)


def test_out_to_loss_is_one_minus_p():
    logits = torch.tensor([[3.0, 1.0], [-2.0, 2.0]])
    labels = torch.tensor([0, 0])
    p = torch.softmax(logits, 1)[:, 0]
    assert np.allclose(out_to_loss(logits, labels).numpy(), (1 - p).numpy(), atol=1e-7)


def test_margin_class_is_the_plain_functions_and_model_output_is_abstract():
    import pytest

    from trakscope.attribution.output import Margin, ModelOutput

    logits, labels = torch.randn(4, 5), torch.tensor([0, 4, 2, 2])
    assert torch.equal(Margin()(logits, labels), margin(logits, labels))
    assert torch.equal(Margin().out_to_loss(logits, labels), out_to_loss(logits, labels))
    with pytest.raises(TypeError):
        ModelOutput()
