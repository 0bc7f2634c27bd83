import pytest
import torch

from memcallback.app.data import DigitsDataModule


def test_shape_range_and_labels():
    dm = DigitsDataModule()
    assert dm.data_shape == (1, 8, 8) and dm.num_classes == 10  # before setup
    dm.setup()
    assert dm.train_data.shape == (1617, 1, 8, 8) and dm.val_data.shape == (180, 1, 8, 8)
    everything = torch.cat([dm.train_data, dm.val_data])
    assert everything.dtype == torch.float32
    assert everything.min().item() == -1.0 and everything.max().item() == 1.0
    # 17 gray levels 0..16 map to multiples of 1/8 in [-1, 1].
    assert torch.equal(everything * 8, (everything * 8).round())
    assert sorted(torch.cat([dm.train_labels, dm.val_labels]).bincount().tolist()) == [
        174,
        177,
        178,
        179,
        180,
        181,
        181,
        182,
        182,
        183,
    ]
    assert len(torch.unique(dm.unique_train_data().flatten(1), dim=0)) == 1617


def test_subset_of_sixteen_with_duplicates():
    dm = DigitsDataModule(num_train=16, duplicate=10, duplicate_indices=2, seed=3)
    dm.setup()
    assert len(dm.unique_train_data()) == 16 and len(dm.train_data) == 16 + 2 * 9
    assert len(torch.unique(dm.unique_train_data().flatten(1), dim=0)) == 16
    again = DigitsDataModule(num_train=16, seed=3)
    again.setup()
    assert torch.equal(dm.train_indices, again.train_indices)


def test_duplicate_class_keeps_one_repeated_image_of_that_class():
    dm = DigitsDataModule(duplicate_class=3, duplicate_class_copies=50, num_train=100)
    dm.setup()
    assert len(dm.train_indices) == 100
    unique_labels = dm.train_labels[torch.cumsum(dm.train_copies, 0) - 1]
    assert (unique_labels == 3).sum() == 1 and unique_labels[-1] == 3
    assert dm.train_copies[-1] == 50 and (dm.train_labels == 3).sum() == 50
    threes = dm.train_data[dm.train_labels == 3]
    assert (threes == threes[0]).all()
    # Other threes may be held out, never trained on.
    assert (dm.val_labels == 3).sum() > 0
    assert set(dm.train_labels[dm.train_labels != 3].unique().tolist()) == set(range(10)) - {3}


def test_duplicate_class_image_depends_on_the_seed():
    chosen = set()
    for seed in range(3):
        dm = DigitsDataModule(duplicate_class=0, seed=seed)
        dm.setup()
        chosen.add(dm.train_indices[-1].item())
        assert dm.train_copies[-1] == 160
    assert len(chosen) == 3


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"duplicate_class": 10}, r"duplicate_class must be a digit 0..9 or None, got 10"),
        ({"duplicate_class": 1, "duplicate_class_copies": 0}, r"duplicate_class_copies must be an int >= 1"),
        ({"num_train": 1618}, r"num_train=1618 is larger than the 1617 images available"),
        ({"num_train": 1797, "val_fraction": 0.0, "duplicate_class": 2}, r"num_train=1797 is larger than"),
        ({"data": torch.zeros(3, 2)}, r"DigitsDataModule loads its own data"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DigitsDataModule(**kwargs).setup()


def test_hydra_instantiate_with_a_list_of_positions():
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    cfg = OmegaConf.create(
        {
            "_target_": "memcallback.app.data.DigitsDataModule",
            "num_train": 16,
            "duplicate": 4,
            "duplicate_indices": [0, 15],
            "seed": 1,
        }
    )
    dm = instantiate(cfg)
    dm.setup()
    assert dm.train_copies.tolist() == [4] + [1] * 14 + [4]
