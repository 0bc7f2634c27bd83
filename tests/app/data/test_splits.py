import pytest
import torch

from memcallback.app.data.splits import ForcedSelection, derived_seed, num_held_out, plan_split


def _plan(num_items=100, seed=0, **overrides):
    kwargs = dict(val_fraction=0.1, num_train=None, duplicate=1, duplicate_indices=0)
    kwargs.update(overrides)
    return plan_split(num_items, generator=torch.Generator().manual_seed(seed), **kwargs)


def test_derived_seeds_differ_per_stream_and_seed_and_are_stable():
    seeds = {derived_seed(s, stream) for s in range(3) for stream in range(3)}
    assert len(seeds) == 9
    assert derived_seed(0, 1) == derived_seed(0, 1)


@pytest.mark.parametrize(("num", "fraction", "expected"), [(100, 0.1, 10), (16, 0.1, 2), (5, 0.01, 1), (100, 0.0, 0)])
def test_num_held_out(num, fraction, expected):
    assert num_held_out(num, fraction) == expected


def test_split_partitions_the_items():
    split = _plan()
    assert len(split.val_indices) == 10 and len(split.train_indices) == 90
    everything = torch.cat([split.train_indices, split.val_indices]).sort().values
    assert torch.equal(everything, torch.arange(100))
    assert torch.equal(split.val_indices, split.val_indices.sort().values)
    assert torch.equal(split.train_copies, torch.ones(90, dtype=torch.long))


def test_subset_is_a_prefix_of_the_random_order_and_does_not_move_the_val_split():
    small, large = _plan(num_train=10), _plan(num_train=50)
    assert torch.equal(small.val_indices, large.val_indices)
    assert torch.equal(small.train_indices, large.train_indices[:10])


def test_duplicate_by_count_and_by_positions():
    split = _plan(num_train=10, duplicate=4, duplicate_indices=3)
    assert split.train_copies.tolist() == [4, 4, 4] + [1] * 7
    split = _plan(num_train=10, duplicate=5, duplicate_indices=[9, 2])
    assert split.train_copies.tolist() == [1, 1, 5, 1, 1, 1, 1, 1, 1, 5]


def test_forced_images_are_trained_on_last_with_their_copies_and_never_held_out():
    forced = ForcedSelection(always=torch.tensor([0, 1]), copies=torch.tensor([7, 3]), never=torch.arange(2, 20))
    for seed in range(5):
        split = _plan(num_items=40, seed=seed, num_train=6, forced=forced, val_fraction=0.5)
        assert split.train_indices[-2:].tolist() == [0, 1]
        assert split.train_copies.tolist() == [1, 1, 1, 1, 7, 3]
        assert not torch.isin(split.train_indices[:-2], torch.arange(20)).any()
        assert not torch.isin(split.val_indices, torch.tensor([0, 1])).any()
    # Duplication multiplies a forced image's copies.
    split = _plan(num_items=40, num_train=3, forced=forced, duplicate=2, duplicate_indices=[2])
    assert split.train_copies.tolist() == [1, 7, 6]


def test_sizes_that_do_not_fit_name_the_argument():
    with pytest.raises(ValueError, match=r"num_train=91 is larger than the 90 images available"):
        _plan(num_train=91)
    with pytest.raises(ValueError, match=r"duplicate_indices=11 asks for more images than the 10"):
        _plan(num_train=10, duplicate=2, duplicate_indices=11)
    with pytest.raises(ValueError, match=r"duplicate_indices holds position 10 but there are only 10"):
        _plan(num_train=10, duplicate=2, duplicate_indices=[10])
    forced = ForcedSelection(always=torch.tensor([0, 1]), copies=torch.tensor([1, 1]))
    with pytest.raises(ValueError, match=r"num_train=1 is smaller than the 2 images"):
        _plan(num_train=1, forced=forced)
    with pytest.raises(ValueError, match="no images left for training"):
        _plan(num_items=1, val_fraction=0.5)
