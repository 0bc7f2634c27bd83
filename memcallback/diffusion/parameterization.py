"""Conversions between the quantities a diffusion network may predict.

With ``x_t = alpha_t x_0 + sigma_t eps`` (variance preserving) the four common targets are related by

    v     = alpha_t eps - sigma_t x_0            (Salimans & Ho 2022)
    eps   = alpha_t v + sigma_t x_t   = (x_t - alpha_t x_0) / sigma_t
    x_0   = alpha_t x_t - sigma_t v   = (x_t - sigma_t eps) / alpha_t
    score = grad log p_t(x_t) = -eps / sigma_t   (Tweedie / denoising score matching)

Every function here takes ``alpha`` and ``sigma`` already broadcastable against ``x_t``
(see :meth:`NoiseSchedule.coefficients`).
"""

from __future__ import annotations

from typing import Literal

from torch import Tensor

PredictionType = Literal["epsilon", "v_prediction", "sample", "score"]
PREDICTION_TYPES: tuple[str, ...] = ("epsilon", "v_prediction", "sample", "score")


def check_prediction_type(prediction_type: str) -> str:
    """Return ``prediction_type`` if known, else raise a ``ValueError`` listing the accepted names."""
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"Unknown prediction_type {prediction_type!r}; expected one of {PREDICTION_TYPES}.")
    return prediction_type


def to_epsilon(output: Tensor, x_t: Tensor, alpha: Tensor, sigma: Tensor, prediction_type: str) -> Tensor:
    """Convert a network output of the given type to the noise prediction ``eps``."""
    check_prediction_type(prediction_type)
    if prediction_type == "epsilon":
        return output
    if prediction_type == "v_prediction":
        return alpha * output + sigma * x_t
    if prediction_type == "sample":
        return (x_t - alpha * output) / sigma
    return -sigma * output  # score


def from_epsilon(eps: Tensor, x_t: Tensor, alpha: Tensor, sigma: Tensor, target: str) -> Tensor:
    """Convert a noise prediction ``eps`` to ``target`` (the inverse of :func:`to_epsilon`)."""
    check_prediction_type(target)
    if target == "epsilon":
        return eps
    x0 = (x_t - sigma * eps) / alpha
    if target == "sample":
        return x0
    if target == "v_prediction":
        return alpha * eps - sigma * x0
    return -eps / sigma  # score


def convert(output: Tensor, x_t: Tensor, alpha: Tensor, sigma: Tensor, source: str, target: str) -> Tensor:
    """Convert a prediction of type ``source`` into type ``target`` at the state ``x_t``."""
    return from_epsilon(to_epsilon(output, x_t, alpha, sigma, source), x_t, alpha, sigma, target)
