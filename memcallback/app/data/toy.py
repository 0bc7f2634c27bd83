"""A 2-D toy mixture: a noisy ring (generalizing part) plus a few repeated isolated points."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from memcallback.app.data.base import GENERATION_STREAM, ArrayDataModule
from memcallback.app.data.splits import ForcedSelection, derived_seed

__all__ = ["ToyMixtureDataModule"]

RING_RADIUS = 0.5
ISOLATED_RADIUS = 1.0


class ToyMixtureDataModule(ArrayDataModule):
    """Points on a ring plus isolated points, each repeated: memorized modes next to a manifold.

    ``num_points`` points lie on the circle of radius 0.5 around the origin (uniform angle, radial
    Gaussian noise of standard deviation ``noise``): a 1-D manifold a model should learn as a whole.
    ``num_isolated`` points sit evenly spaced on the circle of radius 1.0 (a random rotation fixed by
    ``seed``), far from the ring and from each other; each appears ``isolated_copies`` times in training
    and is never held out. Items have shape ``(2,)``; labels are 0 for ring points and 1 for isolated
    points. The isolated points come last in ``unique_train_data()`` and count towards ``num_train``.

    Args:
        num_points: ring points, ``>= 2``.
        num_isolated: isolated points, ``>= 0``.
        isolated_copies: copies of each isolated point in the training set, ``>= 1``.
        noise: radial noise standard deviation of the ring, ``>= 0``.
        **kwargs: the common options of ``ArrayDataModule`` (``batch_size``, ``num_train``,
            ``duplicate``, ``duplicate_indices``, ``val_fraction``, ``samples_per_epoch``, ``seed``,
            ``num_workers``); ``seed`` also fixes the generated points.
    """

    def __init__(
        self,
        num_points: int = 2048,
        num_isolated: int = 4,
        isolated_copies: int = 32,
        noise: float = 0.02,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        for name, value, minimum in (
            ("num_points", num_points, 2),
            ("num_isolated", num_isolated, 0),
            ("isolated_copies", isolated_copies, 1),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
        if isinstance(noise, bool) or not isinstance(noise, int | float) or noise < 0:
            raise ValueError(f"noise must be a float >= 0, got {noise!r}")
        self.num_points = num_points
        self.num_isolated = num_isolated
        self.isolated_copies = isolated_copies
        self.noise = float(noise)
        self.num_classes = 2
        self._data_shape = (2,)
        self._check_num_train(num_points, num_always=num_isolated)

    def load(self) -> tuple[Tensor, Tensor]:
        """Ring points then isolated points, ``[num_points + num_isolated, 2]``, and their 0/1 labels."""
        generator = torch.Generator().manual_seed(derived_seed(self.seed, GENERATION_STREAM))
        angle = torch.rand(self.num_points, generator=generator) * (2 * math.pi)
        radius = RING_RADIUS + self.noise * torch.randn(self.num_points, generator=generator)
        ring = torch.stack([radius * angle.cos(), radius * angle.sin()], dim=1)
        offset = torch.rand(1, generator=generator) * (2 * math.pi)
        iso_angle = offset + torch.arange(self.num_isolated) * (2 * math.pi / max(self.num_isolated, 1))
        isolated = ISOLATED_RADIUS * torch.stack([iso_angle.cos(), iso_angle.sin()], dim=1)
        labels = torch.cat(
            [torch.zeros(self.num_points, dtype=torch.long), torch.ones(self.num_isolated, dtype=torch.long)]
        )
        return torch.cat([ring, isolated]).float(), labels

    def forced_selection(self, labels: Tensor | None, generator: torch.Generator) -> ForcedSelection:
        """Always train on the isolated points, ``isolated_copies`` times each."""
        always = torch.arange(self.num_points, self.num_points + self.num_isolated)
        return ForcedSelection(always=always, copies=torch.full_like(always, self.isolated_copies))
