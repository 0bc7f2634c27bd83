"""The sharpness gap: the memorization score at noised training images against noised held-out images.

The level of the score depends on the network as well as on memorization: a generalizing network also
grows sharper as it trains, wherever it is measured. A memorizing network grows sharp *at its training
images* (its peaks) and not at held-out images, which lie between the peaks. Measured on the same network,
at the same noise level and with the same noise draws, the difference

    gap = mean_i score(alpha_t x_i + sigma_t z_i)  -  mean_j score(alpha_t y_j + sigma_t z_j)

(``x_i`` training images, ``y_j`` held-out images, ``z`` shared) is ~0 for a generalizing network at any
level of sharpness and grows as the network memorizes (docs/scale/reference.md). It needs no sampling, and
only scalars leave the measurement.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from memcallback.diffusion import DiffusionModel, check_model, score_function
from memcallback.measure import names
from memcallback.measure.analysis import measurement_mode, probe_noise
from memcallback.measure.sharpness import Interrupt, SharpnessConfig, SharpnessStats, measure_sharpness


@dataclass
class SharpnessGap:
    """The result of :func:`sharpness_gap`.

    Attributes:
        train: statistics at the noised training images.
        heldout: statistics at the noised held-out images.
        partial: an interrupt stopped the measurement (the gap is NaN).
    """

    train: SharpnessStats | None
    heldout: SharpnessStats | None
    partial: bool = False

    @property
    def gap(self) -> float:
        """Mean score at the training images minus mean score at the held-out images (NaN when partial)."""
        if self.train is None or self.heldout is None or self.partial:
            return float("nan")
        return float(self.train.memorization_score.mean() - self.heldout.memorization_score.mean())

    def summary(self) -> dict[str, float]:
        """``{score_train_images, score_heldout_images, sharpness_gap}`` (NaN where not measured)."""
        def mean(stats: SharpnessStats | None) -> float:
            return float("nan") if stats is None or stats.partial else float(stats.memorization_score.mean())

        return {names.SCORE_TRAIN_IMAGES: mean(self.train), names.SCORE_HELDOUT_IMAGES: mean(self.heldout),
                names.SHARPNESS_GAP: self.gap}


def check_image_pair(shape: tuple[int, ...], train_images: Tensor, heldout_images: Tensor) -> None:
    """Raise a ``ValueError`` unless both sets are ``[n, *shape]`` with the same ``n >= 1`` (the input of a gap
    between training and held-out images)."""
    for name, images in (("train_images", train_images), ("heldout_images", heldout_images)):
        if images.dim() != len(shape) + 1 or tuple(images.shape[1:]) != shape:
            raise ValueError(f"{name} must have shape [n, *{shape}], got {tuple(images.shape)}.")
    if len(train_images) != len(heldout_images) or len(train_images) < 1:
        raise ValueError(f"Give as many held-out as training images, at least one: got {len(train_images)} and "
                         f"{len(heldout_images)}.")


def sharpness_gap(
    model: DiffusionModel,
    train_images: Tensor,
    heldout_images: Tensor,
    timestep: int,
    config: SharpnessConfig | None = None,
    seed: int = 0,
    interrupt: Callable[[], bool] | None = None,
    noise: Tensor | None = None,
) -> SharpnessGap:
    """Measure the memorization score at noised training and held-out images (see the module docstring).

    Args:
        model: any :class:`~memcallback.DiffusionModel` (an ``nn.Module`` is put in eval mode and restored).
        train_images: ``[n, *data_shape]`` training images (clean, in the model's data space).
        heldout_images: ``[n, *data_shape]`` held-out images, as many as ``train_images``.
        timestep: the noise level ``t`` of the states ``alpha_t x + sigma_t z``.
        config: solver and score settings (defaults: :class:`SharpnessConfig`).
        seed: seed of the noise ``z`` (the same draws for both sets) and, afresh for each set, of the solvers'
            random vectors.
        interrupt: as in :func:`~memcallback.measure.analyze`; once it fires the gap is NaN and ``partial``.
        noise: ``z [n, *data_shape]`` to use instead of drawing it from ``seed`` (a process's share of a noise
            drawn for a larger set, so that the states do not depend on how the images were split).

    Returns:
        A :class:`SharpnessGap`.
    """
    model = check_model(model)
    config = config or SharpnessConfig()
    shape = tuple(model.data_shape)
    check_image_pair(shape, train_images, heldout_images)
    if noise is not None and tuple(noise.shape) != tuple(train_images.shape):
        raise ValueError(f"noise must have the shape of the images, {tuple(train_images.shape)}; got "
                         f"{tuple(noise.shape)}.")
    stop = Interrupt(interrupt)
    z = (probe_noise(len(train_images), shape, seed) if noise is None else noise).to(train_images)
    measured: list[SharpnessStats | None] = [None, None]
    for i, images in enumerate((train_images, heldout_images)):
        if stop():
            break
        measured[i] = noised_image_stats(model, images, z, timestep, config, seed=seed, interrupt=stop)
    return SharpnessGap(train=measured[0], heldout=measured[1], partial=stop.fired)


def noised_image_stats(
    model: DiffusionModel,
    images: Tensor,
    noise: Tensor,
    timestep: int,
    config: SharpnessConfig | None = None,
    seed: int = 0,
    interrupt: Callable[[], bool] | None = None,
) -> SharpnessStats:
    """The sharpness statistics at the noised images ``alpha_t x_i + sigma_t z_i`` (one half of the sharpness gap;
    at held-out images, the null distribution of the flag, :mod:`~memcallback.measure.null`).

    Args:
        model: any :class:`~memcallback.DiffusionModel` (an ``nn.Module`` is put in eval mode and restored).
        images: ``[n, *data_shape]`` clean images in the model's data space.
        noise: ``z``, the shape of ``images``.
        timestep: the noise level ``t``.
        config: solver and score settings (defaults: :class:`SharpnessConfig`).
        seed: seed of the solvers' random vectors.
        interrupt: as in :func:`~memcallback.measure.analyze`; the statistics are then ``partial``.
    """
    model = check_model(model)
    alpha = model.schedule.alpha(timestep, torch.float64).item()
    sigma = model.schedule.sigma(timestep, torch.float64).item()
    with measurement_mode(model):
        states = alpha * images.to(noise) + sigma * noise
        return measure_sharpness(score_function(model, timestep), states, timestep, sigma, config or SharpnessConfig(),
                                 generator=torch.Generator().manual_seed(seed), interrupt=interrupt)
