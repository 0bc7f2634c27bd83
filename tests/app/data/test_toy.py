import pytest
import torch

from memcallback.app.data import ToyMixtureDataModule
from memcallback.measure.ground_truth import memorization_labels


def _toy(**kwargs):
    dm = ToyMixtureDataModule(**{"num_points": 200, "num_isolated": 3, "isolated_copies": 5, **kwargs})
    dm.setup()
    return dm


def test_ring_points_and_isolated_points_repeated_exactly():
    dm = _toy(noise=0.01)
    assert dm.data_shape == (2,) and dm.num_classes == 2
    assert dm.val_data.shape == (20, 2) and dm.train_data.shape == (180 + 3 * 5, 2)
    isolated = dm.train_data[dm.train_labels == 1]
    assert len(isolated) == 15
    unique_isolated = torch.unique(isolated, dim=0)
    assert len(unique_isolated) == 3
    for point in unique_isolated:
        assert (isolated == point).all(dim=1).sum() == 5
    assert unique_isolated.norm(dim=1).allclose(torch.ones(3))
    ring = dm.train_data[dm.train_labels == 0]
    assert ((ring.norm(dim=1) - 0.5).abs() < 0.06).all()
    assert (dm.val_labels == 0).all()  # isolated points are never held out
    assert dm.train_labels[-15:].tolist() == [1] * 15


def test_isolated_points_are_evenly_spaced_and_far_from_the_ring():
    dm = _toy(num_isolated=4)
    isolated = dm.unique_train_data()[-4:]
    gaps = torch.cdist(isolated, isolated) + 10 * torch.eye(4)
    assert gaps.min().item() == pytest.approx(2**0.5, abs=1e-5)
    labels = memorization_labels(isolated, dm.unique_train_data())
    assert labels.copied.all()  # a copy of an isolated point: ratio 0


def test_generation_is_fixed_by_the_seed():
    first, again, other = _toy(), _toy(), _toy(seed=1)
    assert torch.equal(first.train_data, again.train_data)
    assert not torch.equal(first.unique_train_data()[-3:], other.unique_train_data()[-3:])


def test_num_train_counts_the_isolated_points():
    dm = _toy(num_train=10)
    assert len(dm.unique_train_data()) == 10
    assert dm.train_copies.tolist() == [1] * 7 + [5] * 3


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_points": 1}, r"num_points must be an int >= 2"),
        ({"num_isolated": -1}, r"num_isolated must be an int >= 0"),
        ({"isolated_copies": 0}, r"isolated_copies must be an int >= 1"),
        ({"noise": -0.1}, r"noise must be a float >= 0"),
        ({"num_train": 184}, r"num_train=184 is larger than the 183 images available"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        _toy(**kwargs)
