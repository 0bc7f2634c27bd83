"""Photographs and scans that ship inside pip packages (no download), by source name.

Every source is a tuple of images ``[C, H, W]`` float32 in [-1, 1] with one channel count (3: RGB, 1: gray):

- ``"sklearn"``: the two photographs of ``sklearn.datasets.load_sample_images()`` (``china.jpg``,
  ``flower.jpg``), RGB; the patches the project was first built on.
- ``"skimage"``: seven RGB photographs bundled with scikit-image (an astronaut, a cat, a coffee cup, a rocket, a
  stained tissue sample, a retina and the Hubble deep field).
- ``"gray"``: grayscale images from scikit-image (a camera man, the moon, bricks, grass, gravel, coins, a page of
  text, cells) and matplotlib's sample data (an MRI slice of a head and two elevation maps), each rescaled
  to [-1, 1] by its own range.
"""

from __future__ import annotations

import gzip
import os
from functools import lru_cache

import numpy as np
import torch
from torch import Tensor

__all__ = ["PHOTO_SOURCES", "photos"]

PHOTO_SOURCES = ("sklearn", "skimage", "gray")
_SKIMAGE_RGB = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "retina",
                "hubble_deep_field")
_SKIMAGE_GRAY = ("camera", "moon", "brick", "grass", "gravel", "coins", "page", "cell")


def _scaled(array: np.ndarray) -> Tensor:
    """``[C, H, W]`` float32 in [-1, 1]: ``[H, W]`` or ``[H, W, C]`` mapped by the image's own min and max."""
    x = np.asarray(array, dtype=np.float32)
    x = x[None] if x.ndim == 2 else x.transpose(2, 0, 1)[:3]
    low, high = float(x.min()), float(x.max())
    return torch.from_numpy(2.0 * (x - low) / max(high - low, 1e-12) - 1.0)


def _sklearn() -> tuple[Tensor, ...]:
    from sklearn.datasets import load_sample_images

    images = load_sample_images()
    by_name = dict(zip((name.rsplit("/", 1)[-1] for name in images.filenames), images.images, strict=True))
    # a fixed affine map (not the per-image range), as the patches were always built
    return tuple(torch.from_numpy(np.array(by_name[name], dtype=np.float32)).permute(2, 0, 1) / 127.5 - 1.0
                 for name in ("china.jpg", "flower.jpg"))


def _skimage(names: tuple[str, ...]) -> tuple[Tensor, ...]:
    import skimage.data

    return tuple(_scaled(getattr(skimage.data, name)()) for name in names)


def _matplotlib_gray() -> tuple[Tensor, ...]:
    import matplotlib

    folder = os.path.join(matplotlib.get_data_path(), "sample_data")
    with gzip.open(os.path.join(folder, "s1045.ima.gz")) as handle:  # a 256 x 256 16-bit MRI slice
        mri = np.frombuffer(handle.read(), dtype="<u2").reshape(256, 256)
    elevation = np.load(os.path.join(folder, "jacksboro_fault_dem.npz"))["elevation"]
    topography = np.load(os.path.join(folder, "topobathy.npz"))["topo"]
    return tuple(_scaled(x) for x in (mri, elevation, topography))


@lru_cache(maxsize=4)
def photos(source: str) -> tuple[Tensor, ...]:
    """The images of ``source`` (one of ``PHOTO_SOURCES``), cached in memory; never modify them in place.

    Raises:
        ValueError: for an unknown source; ImportError with the package to install when scikit-image is missing.
    """
    if source not in PHOTO_SOURCES:
        raise ValueError(f"source must be one of {PHOTO_SOURCES}, got {source!r}")
    if source == "sklearn":
        return _sklearn()
    try:
        if source == "skimage":
            return _skimage(_SKIMAGE_RGB)
        return _skimage(_SKIMAGE_GRAY) + _matplotlib_gray()
    except ModuleNotFoundError as err:
        raise ImportError(f"source={source!r} needs scikit-image: pip install scikit-image") from err
