"""Diffusion models with closed-form scores: exact references for tests."""

from __future__ import annotations

import torch
from torch import Tensor

from memcallback.diffusion import NoiseSchedule, from_epsilon


class GaussianModel:
    """Implements the DiffusionModel protocol exactly for data x_0 ~ N(m, C).

    x_t ~ N(alpha m, alpha^2 C + sigma^2 I), so the true score is
    s(x, t) = -(alpha^2 C + sigma^2 I)^{-1} (x - alpha m) and eps = -sigma s.
    """

    def __init__(self, mean: Tensor, cov: Tensor, schedule: NoiseSchedule, prediction_type: str = "epsilon"):
        self.mean, self.cov = mean.double(), cov.double()
        self.schedule = schedule
        self.prediction_type = prediction_type
        self.data_shape = tuple(mean.shape)

    def exact_score(self, x: Tensor, t: Tensor) -> Tensor:
        alpha, sigma = self.schedule.coefficients(t, x.double())
        a, s = alpha.view(-1, 1, 1), sigma.view(-1, 1, 1)
        d = self.mean.numel()
        cov_t = a**2 * self.cov + s**2 * torch.eye(d, dtype=torch.float64)
        resid = x.double() - alpha * self.mean
        return -torch.linalg.solve(cov_t, resid.unsqueeze(-1)).squeeze(-1).to(x.dtype)

    def model_output(self, x_t: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        alpha, sigma = self.schedule.coefficients(t, x_t)
        eps = -sigma * self.exact_score(x_t, t)
        return from_epsilon(eps, x_t, alpha, sigma, self.prediction_type)


class IsotropicMixtureModel:
    """Implements the DiffusionModel protocol exactly for data x_0 ~ sum_k w_k N(m_k, v_k I).

    x_t ~ sum_k w_k N(alpha m_k, (alpha^2 v_k + sigma^2) I); the score is the responsibility-weighted sum of the
    components' scores, ``-(x - alpha m_k) / (alpha^2 v_k + sigma^2)``, differentiable in ``x`` (its Jacobian is
    the exact Hessian of log p_t). A component with tiny ``v_k`` is a memorized image: the density is sharp
    around it and shaped by the other components elsewhere.
    """

    def __init__(self, means: Tensor, variances: Tensor, weights: Tensor, schedule: NoiseSchedule):
        self.means, self.variances = means.double(), variances.double()
        self.log_weights = weights.double().log()
        self.schedule = schedule
        self.prediction_type = "epsilon"
        self.data_shape = tuple(means.shape[1:])

    def exact_score(self, x: Tensor, t: Tensor) -> Tensor:
        alpha, sigma = self.schedule.coefficients(t, x.double())
        a, s = alpha.view(-1, 1, 1), sigma.view(-1, 1, 1)
        var = a**2 * self.variances.view(1, -1, 1) + s**2  # [B, K, 1]
        resid = x.double().unsqueeze(1) - a * self.means.unsqueeze(0)  # [B, K, d]
        d = self.means.shape[1]
        log_p = self.log_weights - 0.5 * (resid.square().sum(-1) / var.squeeze(-1) + d * var.squeeze(-1).log())
        resp = log_p.softmax(dim=1).unsqueeze(-1)
        return (resp * (-resid / var)).sum(dim=1).to(x.dtype)

    def model_output(self, x_t: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        alpha, sigma = self.schedule.coefficients(t, x_t)
        eps = -sigma * self.exact_score(x_t, t)
        return from_epsilon(eps, x_t, alpha, sigma, self.prediction_type)
