"""The relative loss gap: how much better the network denoises its training images than held-out images.

At noise level ``t`` the denoising error of an image ``x`` with noise ``z`` is measured in epsilon space,

    e_t(x, z) = ||eps_hat(alpha_t x + sigma_t z, t) - z||^2 / d,

whatever the model predicts. A network that generalizes denoises held-out images as well as training images; a
memorizing one knows its training images and denoises them far better. With ``L_train(t)`` and ``L_heldout(t)``
the mean errors over ``n`` training and ``n`` held-out images (the same noise draws ``z`` for both),

    loss_gap = (1/K) sum_k (L_heldout(t_k) - L_train(t_k)) / L_heldout(t_k),
    t_k = floor((k + 1/2) T / K),  k = 0, ..., K - 1,

the fraction of the held-out error the network avoids on its training images, averaged over ``K`` noise levels
spread over the schedule's ``T`` timesteps. Each term is a ratio of two errors at one noise level, so it is the
same for an epsilon-, v-, sample- or score-network (their errors differ from the epsilon error by a factor that
depends on ``t`` only) and does not depend on the scale of the data: about ``0`` for a network that generalizes,
at most ``1``.
It needs forward passes only, no sampling, and only scalars leave the measurement (docs/scale/loss_gap.md).
A conditional model is measured unconditionally (``cond=None``, its null condition).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from memcallback.diffusion import DiffusionModel, check_model, predict_epsilon
from memcallback.measure import names
from memcallback.measure.analysis import measurement_mode, model_device_dtype, probe_noise
from memcallback.measure.reference import check_image_pair

#: ``K``, the number of noise levels of the loss gap.
NUM_LEVELS = 10


@dataclass
class LossGap:
    """The result of :func:`loss_gap`.

    Attributes:
        timesteps: ``[K]`` the noise levels ``t_k``.
        train: ``[n, K]`` denoising error of every training image at every noise level.
        heldout: ``[n, K]`` the same for the held-out images.
    """

    timesteps: Tensor
    train: Tensor
    heldout: Tensor

    @property
    def gap(self) -> float:
        """``(1/K) sum_k (L_heldout(t_k) - L_train(t_k)) / L_heldout(t_k)`` (see the module docstring)."""
        return relative_gap(self.train.mean(dim=0), self.heldout.mean(dim=0))

    def summary(self) -> dict[str, float]:
        """``{loss_train_images, loss_heldout_images, loss_gap}`` (see :func:`loss_gap_summary`)."""
        return loss_gap_summary(self.train, self.heldout)


def loss_gap_summary(train: Tensor, heldout: Tensor) -> dict[str, float]:
    """``{loss_train_images, loss_heldout_images, loss_gap}`` of ``[n, K]`` errors: the mean errors over every
    image and noise level, and the gap."""
    return {names.LOSS_TRAIN_IMAGES: float(train.mean()), names.LOSS_HELDOUT_IMAGES: float(heldout.mean()),
            names.LOSS_GAP: relative_gap(train.mean(dim=0), heldout.mean(dim=0))}


def relative_gap(train: Tensor, heldout: Tensor) -> float:
    """``mean_k (heldout[k] - train[k]) / heldout[k]`` of the ``[K]`` mean errors per noise level."""
    return float(((heldout - train) / heldout).mean())


def loss_timesteps(num_timesteps: int, num_levels: int) -> Tensor:
    """``[K]`` the noise levels ``t_k = floor((k + 1/2) T / K)`` of a schedule with ``T = num_timesteps``."""
    if not 1 <= num_levels <= num_timesteps:
        raise ValueError(f"num_levels must be in [1, {num_timesteps}] (the schedule's timesteps), got {num_levels}.")
    return ((torch.arange(num_levels, dtype=torch.float64) + 0.5) * num_timesteps / num_levels).long()


def loss_noise(num_images: int, data_shape: tuple[int, ...], num_levels: int, seed: int) -> Tensor:
    """``[n, K, *data_shape]`` the noise ``z`` of every image at every noise level (one draw for the whole set,
    so that a process's share is a slice of it)."""
    return probe_noise(num_images, (num_levels, *data_shape), seed)


@torch.no_grad()
def denoising_errors(model: DiffusionModel, images: Tensor, timesteps: Tensor, noise: Tensor,
                     batch_size: int = 256) -> Tensor:
    """``[n, K]`` the epsilon-space error ``||eps_hat(alpha_t x + sigma_t z, t) - z||^2 / d`` of every image at every
    noise level.

    Args:
        model: any :class:`~memcallback.DiffusionModel` (called as it is; :func:`loss_gap` sets eval mode).
        images: ``[n, *data_shape]`` clean images (moved to the model's device and dtype batch by batch).
        timesteps: ``[K]`` noise levels.
        noise: ``[n, K, *data_shape]`` the noise of every image at every level (on any device).
        batch_size: images per network call.
    """
    device, dtype = model_device_dtype(model)
    errors = torch.empty(len(images), len(timesteps), dtype=torch.float64)
    for k, t in enumerate(timesteps.tolist()):
        alpha, sigma = model.schedule.alpha(t, torch.float64).item(), model.schedule.sigma(t, torch.float64).item()
        for start in range(0, len(images), batch_size):
            x = images[start:start + batch_size].to(device, dtype)
            z = noise[start:start + batch_size, k].to(device, dtype)
            eps = predict_epsilon(model, alpha * x + sigma * z, t)
            errors[start:start + len(x), k] = (eps - z).double().flatten(1).pow(2).mean(dim=1).cpu()
    return errors


def loss_gap(
    model: DiffusionModel,
    train_images: Tensor,
    heldout_images: Tensor,
    num_levels: int = NUM_LEVELS,
    seed: int = 0,
    noise: Tensor | None = None,
) -> LossGap:
    """Denoising errors at training and held-out images and their relative gap (see the module docstring).

    Args:
        model: any :class:`~memcallback.DiffusionModel` (an ``nn.Module`` is put in eval mode and restored).
        train_images: ``[n, *data_shape]`` training images (clean, in the model's data space).
        heldout_images: ``[n, *data_shape]`` held-out images, as many as ``train_images``.
        num_levels: ``K``, the number of noise levels spread over the schedule.
        seed: seed of the noise ``z`` (the same draws for both sets).
        noise: ``[n, K, *data_shape]`` to use instead of drawing it from ``seed`` (a process's share of a noise
            drawn for a larger set, :func:`loss_noise`).

    Returns:
        A :class:`LossGap`.
    """
    model = check_model(model)
    shape = tuple(model.data_shape)
    check_image_pair(shape, train_images, heldout_images)
    timesteps = loss_timesteps(model.schedule.num_timesteps, num_levels)
    if noise is None:
        noise = loss_noise(len(train_images), shape, num_levels, seed)
    elif tuple(noise.shape) != (len(train_images), num_levels, *shape):
        raise ValueError(f"noise must have shape {(len(train_images), num_levels, *shape)} ([n, num_levels, "
                         f"*data_shape]); got {tuple(noise.shape)}.")
    with measurement_mode(model, differentiable=False):
        errors = [denoising_errors(model, images, timesteps, noise) for images in (train_images, heldout_images)]
    return LossGap(timesteps=timesteps, train=errors[0], heldout=errors[1])
