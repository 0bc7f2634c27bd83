"""Test operators with exact answers for the spectral solvers.

Every case is ``(fn, x, S)``: a row-wise function, points ``x [B, d]`` and the exact symmetric part
``S = (J + J^T) / 2`` of its Jacobian at ``x`` (``[B, d, d]``, float64), computed independently of
the code under test (closed forms, or ``torch.autograd.functional`` one sample at a time).
"""

from __future__ import annotations

import torch

D = 48
B = 3


def _orthogonal(d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64)).Q


def realistic_spectrum(d: int) -> torch.Tensor:
    """A score-Hessian-like spectrum (sigma^2-normalized): 5 tangent values, a tail, a normal cluster."""
    tangent = torch.tensor([0.9, 0.6, 0.45, 0.3, 0.1], dtype=torch.float64)
    tail = -torch.logspace(-1.5, -0.3, 8, dtype=torch.float64)
    normal = -1.0 - 0.3 * torch.linspace(0, 1, d - 13, dtype=torch.float64)
    return torch.cat([tangent, tail, normal])


def gaussian_case():
    """Score of N(m, Sigma): s(x) = -Sigma^{-1} (x - m); J = -Sigma^{-1} with known eigenvalues."""
    Q = _orthogonal(D, 0)
    lam = realistic_spectrum(D)
    P = Q @ torch.diag(lam) @ Q.T  # = -Sigma^{-1}
    m = torch.randn(D, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    x = torch.randn(B, D, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    return (lambda z: (z - m) @ P.T), x, P.expand(B, D, D).clone()


def skew_case():
    """J = S + K with K antisymmetric: the symmetric part S must come back unchanged."""
    Q = _orthogonal(D, 3)
    S = Q @ torch.diag(realistic_spectrum(D)) @ Q.T
    G = torch.randn(D, D, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    K = 0.2 * (G - G.T)
    x = torch.randn(B, D, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    return (lambda z: z @ (S + K).T), x, S.expand(B, D, D).clone()


def general_case():
    """J = S + G with a general G: the symmetric part is S + (G + G^T)/2."""
    Q = _orthogonal(D, 6)
    S = Q @ torch.diag(realistic_spectrum(D)) @ Q.T
    G = 0.05 * torch.randn(D, D, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    x = torch.randn(B, D, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    return (lambda z: z @ (S + G).T), x, (S + 0.5 * (G + G.T)).expand(B, D, D).clone()


def _per_sample_hessian(logp, x: torch.Tensor) -> torch.Tensor:
    return torch.stack([torch.autograd.functional.hessian(logp, xi) for xi in x])


def mixture_case():
    """Score of a 12-component isotropic Gaussian mixture (nonlinear): H = -I/s2 + Cov_w(means)/s2^2.

    Exact Hessian of log p by autograd, one sample at a time. Varied spectra per sample, plus a
    highly degenerate eigenvalue -1/s2 (multiplicity >= d - 11).
    """
    g = torch.Generator().manual_seed(9)
    means = 0.5 * torch.randn(12, D, generator=g, dtype=torch.float64)
    s2 = 0.5

    def logp(z: torch.Tensor) -> torch.Tensor:
        return torch.logsumexp(-((z[..., None, :] - means) ** 2).sum(-1) / (2 * s2), dim=-1)

    def score(z: torch.Tensor) -> torch.Tensor:
        w = torch.softmax(-((z[:, None, :] - means) ** 2).sum(-1) / (2 * s2), dim=-1)
        return (w @ means - z) / s2

    w = torch.softmax(torch.randn(B, 12, generator=g, dtype=torch.float64), -1)
    x = w @ means + 0.1 * torch.randn(B, D, generator=g, dtype=torch.float64)
    return score, x, _per_sample_hessian(logp, x)


def mlp_case():
    """A small random residual MLP (not a gradient field); S from per-sample autograd Jacobians."""
    torch.manual_seed(10)
    net = torch.nn.Sequential(
        torch.nn.Linear(D, 64), torch.nn.SiLU(), torch.nn.Linear(64, 64), torch.nn.SiLU(), torch.nn.Linear(64, D)
    ).double()

    def fn(z: torch.Tensor) -> torch.Tensor:
        return net(z) - z

    x = torch.randn(B, D, generator=torch.Generator().manual_seed(11), dtype=torch.float64)
    J = torch.stack([torch.autograd.functional.jacobian(lambda v: fn(v[None])[0], xi) for xi in x])
    return fn, x, 0.5 * (J + J.mT)


CASES = {
    "gaussian": gaussian_case,
    "skew": skew_case,
    "general": general_case,
    "mixture": mixture_case,
    "mlp": mlp_case,
}
