"""Patches of real photographs and scans shipped inside pip packages, built so copies stay recognizable."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import torch
from torch import Tensor

from memcallback.app.data.base import ArrayDataModule
from memcallback.app.data.photos import PHOTO_SOURCES, photos

__all__ = ["PatchPool", "PatchesDataModule", "near_duplicates", "patch_pool"]

#: The pool's defaults, shared by ``patch_pool`` and ``PatchesDataModule`` (stride ``None`` and flips on aside).
SOURCE = "sklearn"
PATCH_SIZE = 16
DOWNSCALES = (1, 2, 4)
MIN_STD = 0.1
DEDUP_FRACTION = 0.5
# Rows of the pairwise-distance blocks: memory stays at _BLOCK * pool size numbers.
_BLOCK = 1024


@dataclass(frozen=True)
class PatchPool:
    """The patches of ``patch_pool``.

    Attributes:
        patches: ``[n, C, p, p]`` float32 in [-1, 1].
        labels: ``[n]`` int64: the index of the photo a patch comes from (for ``"sklearn"``: 0 for ``china.jpg``,
            1 for ``flower.jpg``).
        min_distance: every pair of patches is at least this l2 distance apart (the near-duplicate radius; 0
            when ``dedup_fraction`` is 0).
    """

    patches: Tensor
    labels: Tensor
    min_distance: float


def _downscale(image: Tensor, factor: int) -> Tensor:
    """Box filter: the mean of each ``factor x factor`` block of ``image [C, H, W]`` (edges cropped)."""
    channels, height, width = image.shape
    h, w = height // factor, width // factor
    return image[:, : h * factor, : w * factor].reshape(channels, h, factor, w, factor).mean(dim=(2, 4))


def _grid(image: Tensor, patch_size: int, stride: int) -> Tensor:
    """All ``patch_size`` squares of ``image [C, H, W]`` at multiples of ``stride``, row-major, ``[n, C, p, p]``."""
    tiles = image.unfold(1, patch_size, stride).unfold(2, patch_size, stride)  # [C, rows, cols, p, p]
    return tiles.permute(1, 2, 0, 3, 4).reshape(-1, image.shape[0], patch_size, patch_size)


def _nearest_distances(flat: Tensor) -> Tensor:
    """``[n]`` l2 distance of every row of ``flat [n, D]`` to its nearest other row."""
    out = []
    for start, block in zip(range(0, len(flat), _BLOCK), flat.split(_BLOCK), strict=True):
        distances = torch.cdist(block, flat)
        distances[torch.arange(len(block)), torch.arange(start, start + len(block))] = float("inf")
        out.append(distances.min(dim=1).values)
    return torch.cat(out)


def near_duplicates(items: Tensor, radius: float) -> Tensor:
    """Greedy thinning: ``[n]`` bool, True for the items to drop so that no two kept ones are closer than ``radius``.

    Items are visited in order; an item is dropped when it lies within l2 distance ``< radius`` of an earlier
    item that is kept. The result depends only on the order and the distances.

    Args:
        items: ``[n, *shape]``; distances are taken on the flattened items.
        radius: the l2 distance below which two items count as near-duplicates, ``>= 0``.
    """
    flat = items.reshape(len(items), -1).float()
    pairs = []
    for start, block in zip(range(0, len(flat), _BLOCK), flat.split(_BLOCK), strict=True):
        first, second = torch.nonzero(torch.cdist(block, flat) < radius, as_tuple=True)
        first = first + start
        later = first < second
        pairs.append(torch.stack([first[later], second[later]], dim=1))
    drop = [False] * len(flat)
    # Pairs sorted by their first item: an item's fate is settled by the pairs with earlier items before it acts.
    for first, second in torch.cat(pairs).tolist():
        if not drop[first]:
            drop[second] = True
    return torch.tensor(drop, dtype=torch.bool)


@lru_cache(maxsize=8)
def _cached_pool(
    source: str, patch_size: int, stride: int, downscales: tuple[int, ...], flips: bool, min_std: float,
    dedup_fraction: float
) -> PatchPool:
    patches, labels = [], []
    for label, image in enumerate(photos(source)):
        for factor in downscales:
            if min(image.shape[1:]) // factor < patch_size:  # this photo is too small at this scale
                continue
            grid = _grid(_downscale(image, factor), patch_size, stride)
            for variant in (grid, grid.flip(-1)) if flips else (grid,):
                patches.append(variant)
                labels.append(torch.full((len(variant),), label, dtype=torch.long))
    pool, pool_labels = torch.cat(patches), torch.cat(labels)
    textured = pool.flatten(1).std(dim=1) >= min_std
    pool, pool_labels = pool[textured], pool_labels[textured]
    if len(pool) < 2:
        raise ValueError(f"min_std={min_std} leaves {len(pool)} patches: lower it")
    if dedup_fraction == 0:
        return PatchPool(patches=pool.contiguous(), labels=pool_labels, min_distance=0.0)
    radius = dedup_fraction * _nearest_distances(pool.flatten(1)).median().item()
    keep = ~near_duplicates(pool, radius)
    return PatchPool(patches=pool[keep].contiguous(), labels=pool_labels[keep], min_distance=radius)


def patch_pool(
    patch_size: int = PATCH_SIZE,
    stride: int | None = None,
    downscales: Sequence[int] = DOWNSCALES,
    flips: bool = True,
    min_std: float = MIN_STD,
    dedup_fraction: float = DEDUP_FRACTION,
    source: str = SOURCE,
) -> PatchPool:
    """The de-duplicated patches of the photographs of ``source`` (:mod:`~memcallback.app.data.photos`).

    Built in four deterministic steps (no randomness), cached in memory per argument set:

    1. each photo, scaled to [-1, 1], is shrunk by every factor in ``downscales`` (box filter; a factor that
       leaves the photo smaller than a patch skips it), and cut on a grid of ``patch_size`` squares every
       ``stride`` pixels, row-major;
    2. with ``flips``, every patch is also taken mirrored left-right;
    3. near-flat patches go: those whose pixel standard deviation (over channels and pixels) is below
       ``min_std`` (sky, shadows: they sit close to one another, so a copy of one cannot pass the ratio test);
    4. near-duplicates go (``near_duplicates``): with ``m`` the median nearest-neighbour distance of what is
       left, no two kept patches are closer than ``r = dedup_fraction * m`` (earlier patches win: full scale
       before downscaled, unmirrored before mirrored).

    Step 4 is what keeps the nearest-neighbour ground truth meaningful on any subset: a copy ``x + e`` of a
    training patch ``x`` has ``d1 = ||e||`` and ``d2 >= sqrt(r^2 + ||e||^2)`` (for ``e`` orthogonal to the
    gap, as random noise nearly is), so it passes ``d1 / d2 < 1/3`` whenever ``||e|| < r / sqrt(8)``; and no
    held-out patch is within ``r`` of a training patch.

    Args:
        patch_size: side ``p`` of the square patches, ``>= 2``.
        stride: grid step in pixels; ``None`` means ``patch_size`` (non-overlapping). Overlapping grids only
            add patches that step 4 does not find too close.
        downscales: integer shrink factors, each ``>= 1`` and small enough that a photo keeps ``p`` pixels.
        flips: also take every patch mirrored left-right.
        min_std: pixel standard deviation below which a patch is dropped as flat, ``>= 0``.
        dedup_fraction: the near-duplicate radius as a fraction of the median nearest-neighbour distance,
            in [0, 1); 0 keeps every patch.
        source: the photographs, one of ``PHOTO_SOURCES``: ``"sklearn"`` (two RGB photos), ``"skimage"`` (seven
            RGB photos), ``"gray"`` (eleven grayscale photos, an MRI slice and elevation maps).

    Returns:
        The ``PatchPool``: for ``"sklearn"`` 2,612 patches at 16 x 16 and 723 at 32 x 32 with the other defaults.

    Raises:
        ValueError: on an argument out of range; the message names it.
    """
    if source not in PHOTO_SOURCES:
        raise ValueError(f"source must be one of {PHOTO_SOURCES}, got {source!r}")
    for name, value, minimum in (("patch_size", patch_size, 2), ("stride", stride, 1)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < minimum):
            raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    factors = tuple(downscales)
    if not factors or len(set(factors)) != len(factors):
        raise ValueError(f"downscales must list distinct shrink factors, at least one, got {list(factors)}")
    for factor in factors:
        if isinstance(factor, bool) or not isinstance(factor, int) or factor < 1:
            raise ValueError(f"every entry of downscales must be an int >= 1, got {factor!r}")
        largest = max(min(image.shape[1:]) for image in photos(source))
        if largest // factor < patch_size:
            raise ValueError(
                f"downscale {factor} shrinks every photo of {source!r} below patch_size={patch_size}: "
                f"use factors <= {largest // patch_size}"
            )
    if isinstance(min_std, bool) or not isinstance(min_std, int | float) or min_std < 0:
        raise ValueError(f"min_std must be a number >= 0, got {min_std!r}")
    if (isinstance(dedup_fraction, bool) or not isinstance(dedup_fraction, int | float)
            or not 0 <= dedup_fraction < 1):
        raise ValueError(f"dedup_fraction must be a number in [0, 1), got {dedup_fraction!r}")
    return _cached_pool(source, patch_size, stride or patch_size, factors, bool(flips), float(min_std),
                        float(dedup_fraction))


class PatchesDataModule(ArrayDataModule):
    """Patches ``(C, p, p)`` of real photographs, in [-1, 1], with no download (see ``patch_pool``).

    The pool is built once per argument set and cached in memory (seconds). Labels say which photo a patch comes
    from (for ``source="sklearn"``, 0: ``china.jpg``, 1: ``flower.jpg``; ``num_classes`` is the number of
    photos); ``C`` is 3, or 1 for ``source="gray"``. The held-out split,
    subset and duplication options are those of every data module here; since no two patches of the pool
    are near-duplicates, a held-out patch is never a near-copy of a training patch.

    Args:
        patch_size: side of the square patches (16 suits CPU runs, 32 a GPU).
        stride: grid step in pixels; ``None``: ``patch_size`` (non-overlapping).
        downscales: shrink factors of the photos before cutting.
        flips: add the left-right mirror of every patch.
        min_std: drop patches flatter than this pixel standard deviation.
        dedup_fraction: near-duplicate radius as a fraction of the median nearest-neighbour distance.
        source: the photographs (``"sklearn"``, ``"skimage"`` or ``"gray"``, see ``patch_pool``).
        **kwargs: the common options of ``ArrayDataModule`` (``batch_size``, ``num_train``,
            ``duplicate``, ``duplicate_indices``, ``val_fraction``, ``samples_per_epoch``, ``seed``,
            ``num_workers``).
    """

    def __init__(
        self,
        patch_size: int = PATCH_SIZE,
        stride: int | None = None,
        downscales: Sequence[int] = DOWNSCALES,
        flips: bool = True,
        min_std: float = MIN_STD,
        dedup_fraction: float = DEDUP_FRACTION,
        source: str = SOURCE,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        self.pool = patch_pool(patch_size, stride, tuple(downscales), flips, min_std, dedup_fraction, source)
        self.num_classes = len(photos(source))
        self._data_shape = (self.pool.patches.shape[1], patch_size, patch_size)
        self._check_num_train(len(self.pool.patches))

    def load(self) -> tuple[Tensor, Tensor]:
        """The pool's patches ``[n, C, p, p]`` (a copy: the cache stays intact) and their photo labels."""
        return self.pool.patches.clone(), self.pool.labels.clone()
