"""Uniform sampling with replacement for small training sets."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler

__all__ = ["ReplacementSampler"]


class ReplacementSampler(Sampler[int]):
    """Draws ``num_samples`` indices uniformly with replacement from ``range(num_items)`` per epoch.

    A training set of 16 images with a batch size of 128 would otherwise give one partial batch per
    epoch. Each epoch continues the same ``generator``, so epochs differ from one another while the whole
    sequence is fixed by the generator's seed.

    This is deliberately not a ``torch.utils.data.RandomSampler``: under DDP, Lightning replaces a
    ``RandomSampler`` by a ``DistributedSampler`` over the data set (losing ``num_samples`` and the
    replacement), whereas any other sampler is wrapped so that each rank gets its share of this one's
    indices.

    Args:
        num_items: size of the data set, ``>= 1``.
        num_samples: indices per epoch, ``>= 1``.
        generator: source of randomness, owned by the sampler's user.
    """

    def __init__(self, num_items: int, num_samples: int, generator: torch.Generator) -> None:
        if num_items < 1:
            raise ValueError(f"num_items must be >= 1, got {num_items}")
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        self.num_items = num_items
        self.num_samples = num_samples
        self.generator = generator

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[int]:
        yield from torch.randint(self.num_items, (self.num_samples,), generator=self.generator).tolist()
