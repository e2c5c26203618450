import numpy as np
import pytest

from trakscope.config import DataConfig
from trakscope.data import load_dataset, plant_noise, stratified_split, stratified_subset


def test_stratified_split_partitions_and_keeps_proportions():
    labels = np.repeat(np.arange(4), [40, 20, 20, 20])
    rest, held = stratified_split(labels, 0.25, seed=0)
    assert np.array_equal(np.sort(np.concatenate([rest, held])), np.arange(100))
    assert np.bincount(labels[held]).tolist() == [10, 5, 5, 5]
    assert np.array_equal(held, stratified_split(labels, 0.25, seed=0)[1])
    assert not np.array_equal(held, stratified_split(labels, 0.25, seed=1)[1])


def test_stratified_subset_has_exact_size():
    labels = np.repeat(np.arange(3), [50, 30, 20])
    for size in (1, 9, 33, 99):
        sub = stratified_subset(labels, size, seed=3)
        assert len(sub) == size == len(np.unique(sub))
    assert np.bincount(labels[stratified_subset(labels, 10, seed=0)]).tolist() == [5, 3, 2]


def test_plant_noise_flips_exactly_rate_to_other_classes():
    labels = np.random.default_rng(0).integers(0, 5, 1000)
    noisy, flipped = plant_noise(labels, 5, 0.1, seed=0)
    assert flipped.sum() == 100
    assert (noisy[flipped] != labels[flipped]).all() and (noisy[~flipped] == labels[~flipped]).all()
    assert noisy.min() >= 0 and noisy.max() < 5
    with pytest.raises(ValueError):
        plant_noise(labels, 5, 1.5, seed=0)


def test_builtin_mnist_default_split_is_deterministic():
    a, b = load_dataset(DataConfig(noise=0.1)), load_dataset(DataConfig(noise=0.1))  # the demo's setting
    assert (len(a.train), len(a.val), len(a.test)) == (3600, 400, 1000)
    assert not load_dataset(DataConfig()).train.noisy.any()  # planted noise is never on by default
    assert a.train.source_ids == b.train.source_ids and np.array_equal(a.train.labels, b.train.labels)
    assert a.train.noisy.sum() == 360 and not a.test.noisy.any() and not a.val.noisy.any()
    assert not set(a.train.source_ids) & set(a.test.source_ids)
    x = a.train.images.batch(np.arange(4))
    assert x.shape == (4, 3, 32, 32) and x.dtype.is_floating_point
