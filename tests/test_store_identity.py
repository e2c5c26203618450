"""A TRAK store knows its data and its model: other rows, labels, order or architecture are refused at featurize,
loaders that would not give every example once in order are refused, and the user's model is put back."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Sampler, TensorDataset

from trakscope import TRAK
from trakscope.attribution.store import StoreError


def _tiny(hidden: int = 8, seed: int = 0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, hidden), torch.nn.Tanh(),
                                torch.nn.Linear(hidden, 3))
    x, y = torch.randn(30, 3, 2, 2), torch.arange(30) % 3
    return model, x, y


def _batches(x: torch.Tensor, y: torch.Tensor, size: int = 10) -> list:
    return [(x[i:i + size], y[i:i + size]) for i in range(0, len(x), size)]


def _shifted(model: torch.nn.Module, by: float) -> dict:
    return {k: v + by for k, v in model.state_dict().items()}


def _one_line(e: pytest.ExceptionInfo) -> str:
    message = str(e.value)
    assert "\n" not in message
    return message


def test_a_shuffling_loader_is_refused_with_how_to_pass_a_fixed_order(tmp_path):
    model, x, y = _tiny()
    trak = TRAK(model, tmp_path / "s", proj_dim=16, progress=False)
    with pytest.raises(ValueError, match=r"shuffles \(RandomSampler\).*shuffle=False") as e:
        trak.featurize(DataLoader(TensorDataset(x, y), batch_size=10, shuffle=True), split="train")
    _one_line(e)
    assert not (tmp_path / "s" / "ckpt0").exists()  # refused before anything was written


def test_drop_last_is_refused_naming_the_examples_it_would_lose(tmp_path):
    model, x, y = _tiny()
    trak = TRAK(model, tmp_path / "s", proj_dim=16, progress=False)
    with pytest.raises(ValueError, match=r"drop_last=True, so the last 2 examples.*shuffle=False"):
        trak.featurize(DataLoader(TensorDataset(x, y), batch_size=4, drop_last=True), split="train")


class _Order(Sampler):
    def __init__(self, order: list[int]):
        self.order = order

    def __iter__(self):
        return iter(self.order)

    def __len__(self) -> int:
        return len(self.order)


def test_another_sampler_is_accepted_only_if_it_gives_every_index_once_in_order(tmp_path):
    model, x, y = _tiny()
    data = TensorDataset(x, y)
    trak = TRAK(model, tmp_path / "s", proj_dim=16, progress=False)
    for order in (list(range(29, -1, -1)), list(range(29)), [0, *range(29)]):
        with pytest.raises(ValueError, match="does not give every index of its 30 examples once, in order"):
            trak.featurize(DataLoader(data, batch_size=7, sampler=_Order(order)), split="train")
    trak.featurize(DataLoader(data, batch_size=7, sampler=_Order(list(range(30)))), split="train")
    plain = TRAK(model, tmp_path / "p", proj_dim=16, progress=False)
    plain.featurize(DataLoader(data, batch_size=7), split="train")
    np.testing.assert_array_equal(trak.self_influence(), plain.self_influence())


def test_permuted_data_is_refused_under_the_same_and_under_a_new_checkpoint(tmp_path):
    model, x, y = _tiny()
    trak = TRAK(model, tmp_path / "s", proj_dim=16, progress=False)
    trak.featurize(_batches(x, y), split="train", n=30)
    perm = torch.randperm(30, generator=torch.Generator().manual_seed(1))
    again = TRAK(model, tmp_path / "s", proj_dim=16, progress=False)
    for checkpoint in (None, _shifted(model, 0.05)):
        with pytest.raises(StoreError, match=r"row 0 of split 'train'.* other inputs .*another order.*overwrite=True"):
            again.featurize(_batches(x[perm], y[perm]), split="train", n=30, checkpoint=checkpoint)
    assert again.checkpoints("train") == [0]  # the new checkpoint was never completed with the wrong rows
    again.featurize(_batches(x, y, size=7), split="train", n=30)  # the same data in other batches: accepted
    fresh = TRAK(model, tmp_path / "s", proj_dim=16, progress=False, overwrite=True)
    fresh.featurize(_batches(x[perm], y[perm]), split="train", n=30)  # overwrite starts again


def test_changed_labels_are_refused_naming_a_row_and_how_many(tmp_path):
    model, x, y = _tiny()
    trak = TRAK(model, tmp_path / "s", proj_dim=16, progress=False)
    trak.featurize(_batches(x, y), split="train", n=30)
    relabelled = y.clone()
    relabelled[[3, 4]] = (y[[3, 4]] + 1) % 3
    with pytest.raises(StoreError, match=r"row 3 of split 'train'.* has label 1, featurized with label 0 \(2 of 10"):
        trak.featurize(_batches(x, relabelled), split="train", n=30, checkpoint=_shifted(model, 0.05))
    with pytest.raises(StoreError, match="other inputs"):  # labels as float64 are the same labels; inputs are not
        trak.featurize(_batches(x.double(), y.double()), split="train", n=30)


def test_another_architecture_of_the_same_width_is_refused_saying_what_differs(tmp_path):
    model, x, y = _tiny()
    TRAK(model, tmp_path / "s", proj_dim=16, progress=False).featurize(_batches(x, y), split="train", n=30)
    other, _, _ = _tiny(hidden=16)
    with pytest.raises(StoreError, match=r"architecture differs: 3 parameters of another shape "
                                         r"\(e\.g\. 1\.weight \[8, 12\] -> \[16, 12\]\).*overwrite=True") as e:
        TRAK(other, tmp_path / "s", proj_dim=16, progress=False)
    _one_line(e)
    renamed = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Sequential(torch.nn.Linear(12, 8)), torch.nn.Tanh(),
                                  torch.nn.Linear(8, 3))
    with pytest.raises(StoreError, match=r"2 only in the store's model \(e\.g\. 1\.weight\), 2 only in this model"):
        TRAK(renamed, tmp_path / "s", proj_dim=16, progress=False)


def test_a_subset_into_the_same_store_and_a_wrong_row_count_are_refused_at_featurize(tmp_path):
    model, x, y = _tiny()
    trak = TRAK(model, tmp_path / "s", proj_dim=16, progress=False)
    trak.featurize(_batches(x, y), split="train", n=30)
    keep = torch.arange(20)
    with pytest.raises(StoreError, match=r"holds split 'train' with 30 examples, and 20 are given now.*another store"):
        trak.featurize(DataLoader(TensorDataset(x[keep], y[keep]), batch_size=10), split="train",
                       checkpoint=_shifted(model, 0.05))
    with pytest.raises(StoreError, match=r"batches for split 'test' held 25 examples, but n=30"):
        trak.featurize(_batches(x[:25], y[:25]), split="test", n=30)
    with pytest.raises(StoreError, match=r"batch rows reach 29, but the 'val' split has 20 rows"):
        trak.featurize(_batches(x, y), split="val", n=20)


def test_featurize_puts_the_users_weights_and_modes_back(tmp_path):
    model, x, y = _tiny()
    model.train()
    model[2].eval()  # a mixed mode, kept as it is
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trak = TRAK(model, tmp_path / "s", proj_dim=16, progress=False)
    trak.featurize(_batches(x, y), split="train", n=30, checkpoint=_shifted(model, 0.5))
    trak.features(x[:3], y[:3], checkpoint=_shifted(model, 0.5))
    trak.score_inputs(x[:3], y[:3], [_shifted(model, 0.5)])
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert [m.training for m in model.modules()] == [True, True, True, False, True]
