"""The image families that ship in pip packages: faces, procedural textures, and the photo sources of the patches."""

from __future__ import annotations

import pytest
import torch

from memcallback.app.data import FacesDataModule, PatchesDataModule, TexturesDataModule
from memcallback.app.data.patches import patch_pool
from memcallback.app.data.photos import PHOTO_SOURCES, photos
from memcallback.app.data.textures import textures


def test_faces_are_scikit_images_lfw_crops_with_mirrors() -> None:
    dm = FacesDataModule(num_train=10, seed=0)
    dm.setup("fit")
    images, labels = dm.load()
    assert images.shape[1:] == (1, 24, 24) and dm.data_shape == (1, 24, 24)
    assert images.min() >= -1 and images.max() <= 1
    assert 100 < len(images) <= 200  # near-symmetric faces lose their mirror
    assert all(torch.equal(images[i], images[labels[i]].flip(-1)) for i in range(100, len(images)))
    assert dm.unique_train_data().shape == (10, 1, 24, 24) and len(dm.heldout_data()) == 20
    plain, _ = FacesDataModule(flips=False).load()
    assert plain.shape == (100, 1, 24, 24)
    assert torch.equal(labels[: 100], torch.arange(100))


def test_textures_are_deterministic_smooth_and_in_range() -> None:
    a, b = textures(50, 16, seed=3), textures(50, 16, seed=3)
    assert torch.equal(a, b) and not torch.equal(a, textures(50, 16, seed=4))
    assert a.shape == (50, 3, 16, 16) and a.abs().max() < 1
    neighbours = (a[..., 1:] - a[..., :-1]).abs().mean()  # plane waves of at most 4 cycles: neighbours are close
    assert neighbours < 0.5 * (a - a.roll(1, dims=0)).abs().mean()
    dm = TexturesDataModule(num_items=200, num_train=16, seed=0)
    dm.setup("fit")
    assert dm.unique_train_data().shape == (16, 3, 16, 16) and len(dm.heldout_data()) == 20
    with pytest.raises(ValueError, match="size must be an int >= 2"):
        TexturesDataModule(size=1)


@pytest.mark.parametrize("source", PHOTO_SOURCES)
def test_every_photo_source_loads_offline_in_range(source: str) -> None:
    images = photos(source)
    channels = {image.shape[0] for image in images}
    assert channels == ({1} if source == "gray" else {3})
    assert all(image.min() >= -1 and image.max() <= 1 for image in images)


def test_patches_of_other_sources() -> None:
    pool = patch_pool(16, downscales=(6,), source="skimage")
    assert pool.patches.shape[1:] == (3, 16, 16) and int(pool.labels.max()) < len(photos("skimage"))
    gray = PatchesDataModule(source="gray", downscales=(4,), num_train=8)
    gray.setup("fit")
    assert gray.data_shape == (1, 16, 16) and gray.num_classes == len(photos("gray"))
    with pytest.raises(ValueError, match="source must be one of"):
        patch_pool(source="imagenet")
