"""Procedural colour textures: a data set of any size drawn from a known, smooth distribution (no files at all)."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from memcallback.app.data.base import ArrayDataModule

__all__ = ["TexturesDataModule", "textures"]

NUM_WAVES = 3  # gratings summed per texture


def textures(num_items: int, size: int, seed: int) -> Tensor:
    r"""``[num_items, 3, size, size]`` textures in [-1, 1], each a sum of ``NUM_WAVES`` coloured plane waves.

    Texture ``i`` is ``tanh(sum_j c_j cos(2 pi f_j <u_j, p> / size + phi_j))`` per colour channel, with a random
    direction ``u_j`` (angle uniform), frequency ``f_j`` uniform in [0.5, 4] cycles per image, phase ``phi_j``
    uniform, and colour ``c_j`` a Gaussian 3-vector of norm about 1.2; ``p`` runs over the pixel grid. About 21
    continuous parameters per texture: a training set of thousands covers the distribution, one of a dozen is
    a handful of isolated points. Deterministic in ``seed``.
    """
    generator = torch.Generator().manual_seed(seed)
    angle = 2 * math.pi * torch.rand(num_items, NUM_WAVES, generator=generator)
    frequency = 0.5 + 3.5 * torch.rand(num_items, NUM_WAVES, generator=generator)
    phase = 2 * math.pi * torch.rand(num_items, NUM_WAVES, generator=generator)
    colour = 0.7 * torch.randn(num_items, NUM_WAVES, 3, generator=generator)
    grid = torch.arange(size, dtype=torch.float32)
    ys, xs = torch.meshgrid(grid, grid, indexing="ij")
    along = (torch.cos(angle)[..., None, None] * xs + torch.sin(angle)[..., None, None] * ys) / size
    waves = torch.cos(2 * math.pi * frequency[..., None, None] * along + phase[..., None, None])  # [n, J, H, W]
    return torch.tanh(torch.einsum("njc,njhw->nchw", colour, waves)).contiguous()


class TexturesDataModule(ArrayDataModule):
    """``num_items`` procedural colour textures ``(3, size, size)`` (see :func:`textures`), no labels.

    Args:
        num_items: textures generated (before the held-out split); ``num_train`` picks a subset of them.
        size: side of the square textures (divisible by 2 for the UNet).
        **kwargs: the common options of ``ArrayDataModule`` (``batch_size``, ``num_train``, ``duplicate``,
            ``duplicate_indices``, ``val_fraction``, ``samples_per_epoch``, ``seed``, ``num_workers``); ``seed``
            also seeds the textures.
    """

    def __init__(self, num_items: int = 20_000, size: int = 16, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        for name, value, minimum in (("num_items", num_items, 2), ("size", size, 2)):
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
        self.num_items, self.size = num_items, size
        self._data_shape = (3, size, size)
        self._check_num_train(num_items)

    def load(self) -> tuple[Tensor, None]:
        """The textures ``[num_items, 3, size, size]``."""
        return textures(self.num_items, self.size, self.seed), None
