"""Index bookkeeping for the data modules: held-out split, training subset, duplication."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

__all__ = ["ForcedSelection", "Split", "derived_seed", "num_held_out", "plan_split"]


def derived_seed(seed: int, stream: int) -> int:
    """An independent 32-bit seed for one random stream (split, loader, generation) of a data module."""
    return int(np.random.SeedSequence([seed, stream]).generate_state(1)[0])


def num_held_out(num_candidates: int, val_fraction: float) -> int:
    """Size of the held-out split: ``round(val_fraction * n)``, at least 1 when ``val_fraction > 0``."""
    if val_fraction == 0.0:
        return 0
    return max(1, round(val_fraction * num_candidates))


@dataclass(frozen=True)
class ForcedSelection:
    """Images a data set pins into, or keeps out of, the training subset.

    Attributes:
        always: indices always in the training subset (never held out), placed after the random part.
        copies: ``[len(always)]`` total copies of each pinned image.
        never: indices never in the training subset (they may still be held out).
    """

    always: Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.long))
    copies: Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.long))
    never: Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.long))


@dataclass(frozen=True)
class Split:
    """Result of ``plan_split``.

    Attributes:
        train_indices: ``[n]`` distinct training images (indices into the full set), random part first.
        train_copies: ``[n]`` how many times each training image appears in the served training set.
        val_indices: ``[v]`` held-out images, sorted, disjoint from ``train_indices``.
    """

    train_indices: Tensor
    train_copies: Tensor
    val_indices: Tensor


def plan_split(
    num_items: int,
    *,
    val_fraction: float,
    num_train: int | None,
    duplicate: int,
    duplicate_indices: int | Sequence[int],
    generator: torch.Generator,
    forced: ForcedSelection | None = None,
) -> Split:
    """Choose the held-out split, then the training subset, then the copies of each training image.

    The held-out images are drawn first, from all images except ``forced.always``. The training subset is
    ``num_train`` distinct images (all remaining ones when ``None``): a random draw from the rest (minus
    ``forced.never``), followed by ``forced.always``. ``duplicate_indices`` names positions in that
    subset (an int ``n`` means the first ``n``, which are random images); each named image appears
    ``duplicate`` times, multiplying any copies a forced image already has.

    Args:
        num_items: size of the full data set.
        val_fraction: fraction of the candidates held out, in [0, 1).
        num_train: number of distinct training images, or ``None`` for all that remain.
        duplicate: total copies of each image named by ``duplicate_indices``.
        duplicate_indices: number of leading subset images to duplicate, or their positions.
        generator: source of all randomness.
        forced: images pinned into or kept out of training.

    Returns:
        The ``Split``.

    Raises:
        ValueError: when ``num_train`` or ``duplicate_indices`` do not fit the data.
    """
    forced = forced or ForcedSelection()
    is_always = torch.zeros(num_items, dtype=torch.bool)
    is_always[forced.always] = True
    candidates = torch.nonzero(~is_always).squeeze(1)
    candidates = candidates[torch.randperm(len(candidates), generator=generator)]
    n_val = num_held_out(len(candidates), val_fraction)
    val_indices = candidates[:n_val].sort().values
    pool = candidates[n_val:]
    pool = pool[~torch.isin(pool, forced.never)]

    num_random_available = len(pool)
    available = num_random_available + len(forced.always)
    if num_train is None:
        num_random = num_random_available
    else:
        if num_train > available:
            raise ValueError(
                f"num_train={num_train} is larger than the {available} images available for training "
                f"({num_items} in the data set, {n_val} held out by val_fraction={val_fraction})"
            )
        if num_train < len(forced.always):
            raise ValueError(
                f"num_train={num_train} is smaller than the {len(forced.always)} images this data set always trains on"
            )
        num_random = num_train - len(forced.always)
    train_indices = torch.cat([pool[:num_random], forced.always])
    if len(train_indices) == 0:
        raise ValueError("no images left for training: lower val_fraction or use a larger data set")

    train_copies = torch.ones(len(train_indices), dtype=torch.long)
    train_copies[num_random:] = forced.copies
    if isinstance(duplicate_indices, int):
        if duplicate_indices > len(train_indices):
            raise ValueError(
                f"duplicate_indices={duplicate_indices} asks for more images than the "
                f"{len(train_indices)} training images"
            )
        positions = torch.arange(duplicate_indices)
    else:
        positions = torch.as_tensor(list(duplicate_indices), dtype=torch.long)
        if len(positions) and int(positions.max()) >= len(train_indices):
            raise ValueError(
                f"duplicate_indices holds position {int(positions.max())} but there are only "
                f"{len(train_indices)} training images (positions 0..{len(train_indices) - 1})"
            )
    train_copies[positions] *= duplicate
    return Split(train_indices=train_indices, train_copies=train_copies, val_indices=val_indices)
