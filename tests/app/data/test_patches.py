import numpy as np
import pytest
import torch

from memcallback.app.data import PatchesDataModule
from memcallback.app.data.patches import near_duplicates, patch_pool
from memcallback.measure.ground_truth import memorization_labels


def test_grid_counts_without_filtering():
    # 427 x 640 photos, 16-pixel tiles: 26 x 40 at full size, 13 x 20 at 1/2 (213 x 320), 6 x 10 at 1/4 (106 x 160).
    pool = patch_pool(16, downscales=(1, 2, 4), flips=True, min_std=0.0, dedup_fraction=0.0)
    assert pool.patches.shape == (2 * 2 * (26 * 40 + 13 * 20 + 6 * 10), 3, 16, 16)
    assert pool.labels.bincount().tolist() == [2720, 2720]
    half_stride = patch_pool(16, stride=8, downscales=(1,), flips=False, min_std=0.0, dedup_fraction=0.0)
    assert len(half_stride.patches) == 2 * 52 * 79


def test_patches_are_the_photos_scaled_to_unit_range():
    from sklearn.datasets import load_sample_images

    china = next(im for name, im in zip(load_sample_images().filenames, load_sample_images().images, strict=True)
                 if name.endswith("china.jpg"))
    pool = patch_pool(16, downscales=(1, 2), flips=False, min_std=0.0, dedup_fraction=0.0)
    expected = torch.from_numpy(np.array(china[16:32, 32:48], dtype=np.float32)).permute(2, 0, 1) / 127.5 - 1
    assert torch.equal(pool.patches[40 + 2], expected)  # row 1, column 2 of the 26 x 40 full-size grid
    box = china[:32, :32].astype(np.float64).reshape(16, 2, 16, 2, 3).mean(axis=(1, 3))
    first_half_scale = torch.from_numpy(box / 127.5 - 1).permute(2, 0, 1).float()
    torch.testing.assert_close(pool.patches[26 * 40], first_half_scale)


@pytest.mark.parametrize(("patch_size", "size"), [(16, 2612), (32, 723)])
def test_default_pool_has_no_flat_patches_and_no_near_duplicates(patch_size, size):
    pool = patch_pool(patch_size)
    assert pool.patches.shape == (size, 3, patch_size, patch_size)
    assert pool.patches.min() >= -1 and pool.patches.max() <= 1
    assert (pool.patches.flatten(1).std(dim=1) >= 0.1).all()
    flat = pool.patches.flatten(1).double()
    gaps = torch.cdist(flat, flat) + torch.diag(torch.full((size,), float("inf"), dtype=torch.float64))
    assert gaps.min() >= pool.min_distance > 0
    assert patch_pool(patch_size) is pool  # cached


def test_near_duplicates_thins_greedily_in_order():
    points = torch.tensor([[0.0], [0.5], [1.2], [1.4], [3.0], [0.0]])
    # 0.5 and the second 0.0 fall within 1 of the first point; 1.2 is kept (0.5 is gone); 1.4 falls within 1 of 1.2.
    assert near_duplicates(points, 1.0).tolist() == [False, True, False, True, False, True]
    assert not near_duplicates(points[:5], 0.1).any()


@pytest.mark.parametrize("patch_size", [16, 32])
@pytest.mark.parametrize("num_train", [32, None])
def test_nearest_neighbour_labeller_is_calibrated_on_the_pool(patch_size, num_train):
    """Noisy copies of training patches are copies by the 1/3 ratio test; held-out patches are not."""
    dm = PatchesDataModule(patch_size=patch_size, num_train=num_train, seed=1)
    dm.setup()
    train = dm.unique_train_data()
    noise = 0.02 * torch.randn(train.shape, generator=torch.Generator().manual_seed(0))
    assert memorization_labels(train + noise, train).rate >= 0.95
    assert memorization_labels(dm.val_data, train).rate <= 0.05


def test_data_module_options():
    dm = PatchesDataModule(num_train=24, duplicate=5, duplicate_indices=2, val_fraction=0.1, seed=3)
    assert dm.data_shape == (3, 16, 16) and dm.num_classes == 2  # before setup
    dm.setup()
    assert dm.unique_train_data().shape == (24, 3, 16, 16) and len(dm.train_data) == 24 + 2 * 4
    assert len(dm.val_data) == round(0.1 * 2612)
    assert not set(dm.train_indices.tolist()) & set(dm.val_indices.tolist())
    assert set(dm.train_labels.tolist()) <= {0, 1}
    dm.unique_train_data().zero_()
    assert patch_pool().patches.abs().sum() > 0  # the cached pool is not shared with the data module
    again = PatchesDataModule(num_train=24, seed=3)
    again.setup()
    assert torch.equal(again.train_indices, dm.train_indices)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"patch_size": 1}, r"patch_size must be an int >= 2, got 1"),
        ({"stride": 0}, r"stride must be an int >= 1, got 0"),
        ({"downscales": []}, r"downscales must list distinct shrink factors"),
        ({"downscales": [1, 1]}, r"downscales must list distinct shrink factors"),
        ({"downscales": [0]}, r"every entry of downscales must be an int >= 1, got 0"),
        ({"patch_size": 32, "downscales": [1, 16]}, r"downscale 16 shrinks .* use factors <= 13"),
        ({"min_std": -0.1}, r"min_std must be a number >= 0"),
        ({"min_std": 5.0}, r"min_std=5.0 leaves 0 patches"),
        ({"dedup_fraction": 1.0}, r"dedup_fraction must be a number in \[0, 1\)"),
        ({"num_train": 2400}, r"num_train=2400 is larger than the 2351 images available"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PatchesDataModule(**kwargs)

