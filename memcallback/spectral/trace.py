"""Stochastic trace (Hutchinson) and spectral density (stochastic Lanczos quadrature)."""

from __future__ import annotations

import math

import torch

from memcallback.spectral._common import check_operator, check_positive_int, rademacher
from memcallback.spectral.lanczos import block_tridiagonal, lanczos_tridiagonal
from memcallback.spectral.operators import BatchedOperator
from memcallback.spectral.results import SpectralDensity, TraceResult


def hutchinson_trace(
    op: BatchedOperator, num_probes: int = 16, generator: torch.Generator | None = None
) -> TraceResult:
    """Hutchinson estimate of ``tr A_b`` per sample with Rademacher probes.

    ``tr A = E[z^T A z]`` for ``z`` with independent +-1 entries; the estimate is the mean of
    ``num_probes`` quadratic forms, with standard error ``std / sqrt(num_probes)`` (``inf`` for one
    probe). The variance is ``2 (||A||_F^2 - sum_i A_ii^2)`` per probe (no diagonal contribution,
    unlike Gaussian probes). All probes go through the operator in one call.

    Args:
        op: :class:`BatchedOperator` (only its symmetric part matters for ``z^T A z``).
        num_probes: number of probes per sample.
        generator: probe randomness, drawn on ``generator.device``.

    Returns:
        :class:`TraceResult` with ``estimate [B]``, ``stderr [B]``, ``num_matvecs = num_probes``.
    """
    op = check_operator(op)
    check_positive_int("num_probes", num_probes)
    B = op.batch_size
    Z = rademacher(op, (B, num_probes, *op.shape), generator)
    forms = (Z * op(Z)).reshape(B, num_probes, -1).sum(-1)
    estimate = forms.mean(1)
    stderr = forms.std(1) / math.sqrt(num_probes) if num_probes > 1 else torch.full_like(estimate, math.inf)
    return TraceResult(estimate=estimate, stderr=stderr, num_matvecs=num_probes)


def slq_density(
    op: BatchedOperator,
    num_probes: int = 4,
    num_iters: int = 30,
    generator: torch.Generator | None = None,
) -> SpectralDensity:
    """Spectral density per sample by stochastic Lanczos quadrature.

    For each Rademacher probe ``z`` (``q_1 = z / sqrt(d)``) ``m`` Lanczos steps give ``T_m`` with
    eigenpairs ``(theta_j, s_j)``; Gauss quadrature gives
    ``q_1^T f(A) q_1 ~= sum_j s_{1j}^2 f(theta_j)``. Averaging over probes,
    ``tr f(A) / d ~= sum_j w_j f(theta_j)`` with ``w = s_{1j}^2 / P``. All probes of all samples run
    together: one operator call per step.

    Args:
        op: symmetric :class:`BatchedOperator`.
        num_probes: probes ``P`` per sample.
        num_iters: Lanczos steps ``m`` per probe (capped at ``d``; fewer if a Krylov space is
            exhausted: the extra nodes then get weight 0).
        generator: probe randomness.

    Returns:
        :class:`SpectralDensity` with ``nodes, weights [B, P*m]``, weights summing to 1 per sample.
    """
    op = check_operator(op)
    check_positive_int("num_probes", num_probes)
    check_positive_int("num_iters", num_iters)
    B, d = op.batch_size, op.dim
    start = rademacher(op, (B, num_probes, d), generator) / math.sqrt(d)
    alpha, beta, ends, _ = lanczos_tridiagonal(op, start, min(num_iters, d), generator)
    theta, S = torch.linalg.eigh(block_tridiagonal(alpha, beta, ends))
    weights = S[..., 0, :].square() / num_probes
    return SpectralDensity(
        nodes=theta.reshape(B, -1).to(op.dtype),
        weights=weights.reshape(B, -1).to(op.dtype),
        num_matvecs=alpha.shape[-1],
    )
