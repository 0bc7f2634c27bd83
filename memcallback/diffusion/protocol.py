"""The model protocol: what memcallback needs from a diffusion model, and the score it derives from it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

from memcallback.diffusion.parameterization import check_prediction_type, from_epsilon, to_epsilon
from memcallback.diffusion.schedule import NoiseSchedule


@runtime_checkable
class DiffusionModel(Protocol):
    """What the callback and :func:`memcallback.analyze` need from a diffusion model.

    Any object (typically your ``LightningModule``) with these four members works:

    Attributes:
        schedule: the :class:`NoiseSchedule` the model was trained with.
        prediction_type: one of ``"epsilon"``, ``"v_prediction"``, ``"sample"``, ``"score"``.
        data_shape: the shape of one sample, e.g. ``(1, 8, 8)``.

    ``model_output(x_t, t, cond=None)`` returns the raw network prediction for a batch ``x_t [B, *data_shape]``
    at integer timesteps ``t [B]``. ``cond`` is an optional batch of conditions (e.g. class labels);
    ``None`` means the unconditional (null) condition used for classifier-free guidance.
    """

    schedule: NoiseSchedule
    prediction_type: str
    data_shape: tuple[int, ...]

    def model_output(self, x_t: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor: ...


def check_model(model: object) -> DiffusionModel:
    """Raise a ``TypeError`` naming every missing member if ``model`` does not implement the protocol."""
    missing = [name for name in ("schedule", "prediction_type", "data_shape", "model_output")
               if not hasattr(model, name)]
    if missing:
        raise TypeError(
            f"{type(model).__name__} does not implement memcallback.DiffusionModel: missing {missing}. "
            "Add `schedule` (a memcallback.NoiseSchedule), `prediction_type`, `data_shape` and "
            "`model_output(x_t, t, cond=None)` to your module (see README, 'Your own model')."
        )
    if not isinstance(model.schedule, NoiseSchedule):
        raise TypeError(f"model.schedule must be a memcallback.NoiseSchedule, got {type(model.schedule).__name__}.")
    check_prediction_type(model.prediction_type)
    if not all(isinstance(n, int) and n > 0 for n in tuple(model.data_shape)):
        raise TypeError(f"model.data_shape must be a tuple of positive ints, got {model.data_shape!r}.")
    return model  # type: ignore[return-value]


def _timesteps(t: Tensor | int, x_t: Tensor) -> Tensor:
    return torch.as_tensor(t, device=x_t.device, dtype=torch.long).expand(x_t.shape[0])


def predict_epsilon(
    model: DiffusionModel, x_t: Tensor, t: Tensor | int, cond: Tensor | None = None, guidance_scale: float = 1.0
) -> Tensor:
    """The model's noise prediction at ``x_t``, with classifier-free guidance when ``guidance_scale != 1``.

    Guidance combines the two predictions in epsilon space:
    ``eps = eps(x, empty) + w (eps(x, c) - eps(x, empty))``.
    """
    t = _timesteps(t, x_t)
    alpha, sigma = model.schedule.coefficients(t, x_t)

    def eps_for(c: Tensor | None) -> Tensor:
        return to_epsilon(model.model_output(x_t, t, c), x_t, alpha, sigma, model.prediction_type)

    if cond is None or guidance_scale == 1.0:
        return eps_for(cond)
    uncond = eps_for(None)
    return uncond + guidance_scale * (eps_for(cond) - uncond)


def score(
    model: DiffusionModel, x_t: Tensor, t: Tensor | int, cond: Tensor | None = None, guidance_scale: float = 1.0
) -> Tensor:
    """The learned score ``s(x_t, t) = grad log p_t(x_t) = -eps_hat(x_t, t) / sigma_t``."""
    t = _timesteps(t, x_t)
    alpha, sigma = model.schedule.coefficients(t, x_t)
    return from_epsilon(predict_epsilon(model, x_t, t, cond, guidance_scale), x_t, alpha, sigma, "score")


def score_function(
    model: DiffusionModel, t: int, cond: Tensor | None = None, guidance_scale: float = 1.0
) -> Callable[[Tensor], Tensor]:
    """A per-sample score function ``x [B, *shape] -> s(x, t) [B, *shape]`` at a fixed timestep ``t``.

    This is the function whose Jacobian ``H = ds/dx`` is the Hessian of ``log p_t``; pass it to
    :func:`memcallback.spectral.jacobian_operator`.
    """
    return lambda x: score(model, x, t, cond, guidance_scale)
