"""Shifted block power iteration (subspace iteration with Rayleigh-Ritz)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from memcallback.spectral._common import (
    apply_flat,
    check_k,
    check_operator,
    check_positive_int,
    check_which,
    randn,
    select,
)
from memcallback.spectral.operators import BatchedOperator
from memcallback.spectral.results import SpectrumResult


def spectral_norm_estimate(
    op: BatchedOperator, generator: torch.Generator | None, max_iters: int = 50, rtol: float = 1e-3
) -> tuple[torch.Tensor, int]:
    """Estimates ``||A_b||_2`` per sample by plain power iteration on one vector.

    ``v <- A v / ||A v||`` until ``||A v||`` changes by less than ``rtol`` (relative) for every sample
    or after ``max_iters`` products. The estimate approaches ``||A||_2`` from below.

    Returns:
        ``([B] estimate, products used per sample)``.
    """
    v = randn(op, (op.batch_size, 1, op.dim), generator)
    v = v / torch.linalg.vector_norm(v, dim=-1, keepdim=True)
    estimate = torch.zeros(op.batch_size, dtype=op.dtype, device=op.device)
    for i in range(max_iters):
        w = apply_flat(op, v)
        new = torch.linalg.vector_norm(w, dim=-1)[:, 0]
        done = bool(((new - estimate).abs() <= rtol * new).all())
        estimate = new
        if done or bool((new == 0).any()):
            return estimate, i + 1
        v = w / new[:, None, None]
    return estimate, max_iters


def power_iteration(
    op: BatchedOperator,
    k: int,
    which: str = "LM",
    max_iters: int = 1000,
    tol: float = 1e-4,
    shift: float | torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    v0: torch.Tensor | None = None,
    return_eigenvectors: bool = False,
    *,
    block_size: int | None = None,
    interrupt: Callable[[], bool] | None = None,
) -> SpectrumResult:
    """``k`` extreme eigenpairs by shifted subspace (block power) iteration with Rayleigh-Ritz.

    A block ``Q`` of ``p`` orthonormal vectors per sample is multiplied by ``M`` and
    re-orthonormalized each iteration, ``Q <- qr(M Q)``, where ``M = A + c I`` for ``"LA"`` and
    ``"LM"`` and ``M = c I - A`` for ``"SA"``. With ``c >= -lambda_min`` (``"LA"``) the wanted end is
    the dominant part of ``M``, and eigenvalue ``i`` converges at the rate
    ``(lambda_{p+1} + c) / (lambda_i + c)`` per iteration. Each iteration the Ritz pairs of ``A`` on
    ``span(Q)`` (from ``Q^T A Q``) give the eigenvalue estimates and exact residuals
    ``||A u_i - theta_i u_i||``; sample ``b`` has converged when the ``k`` wanted residuals are
    ``<= tol * max_i |theta_i|``. The Rayleigh-Ritz step replaces explicit deflation: converged
    vectors stay in the block, orthogonal to the others.

    Args:
        op: symmetric :class:`BatchedOperator`.
        k: number of eigenpairs, ``1 <= k <= op.dim``.
        which: ``"LA"``, ``"SA"`` or ``"LM"``.
        max_iters: maximum number of block iterations (each costs ``p`` products per sample).
        tol: relative residual tolerance.
        shift: ``c`` above (scalar or ``[B]``). Default: for ``"LA"``/``"SA"`` an estimate of
            ``||A||_2`` by power iteration (its products are counted), which makes ``M``
            positive semi-definite; for ``"LM"``, 0.
        generator: for the random start block and the norm estimate (drawn on ``generator.device``).
        v0: warm start ``[B, *shape]`` or ``[B, j, *shape]`` (``j <= p``): the first ``j`` block vectors.
        return_eigenvectors: also return the Ritz vectors ``[B, k, *shape]``.
        block_size: ``p``; default ``min(d, 2k)``.
        interrupt: called after every block iteration; once it returns True the iteration stops there
            and returns the current Ritz pairs.

    Returns:
        :class:`SpectrumResult`; ``num_matvecs`` includes the norm estimate.

    Raises:
        TypeError: ``op`` is not a :class:`BatchedOperator`.
        ValueError: unknown ``which``, ``k``/``block_size``/``max_iters``/``v0`` out of range.
        FloatingPointError: the operator returned NaN/inf.
    """
    op = check_operator(op)
    which = check_which(which)
    k = check_k(k, op.dim)
    check_positive_int("max_iters", max_iters)
    if not tol >= 0:
        raise ValueError(f"tol must be >= 0, got {tol!r}.")
    B, d = op.batch_size, op.dim
    p = min(d, 2 * k) if block_size is None else block_size
    if isinstance(p, bool) or not isinstance(p, int) or not k <= p <= d:
        raise ValueError(f"block_size must be an int with k = {k} <= block_size <= d = {d}, got {p!r}.")

    used = 0
    if shift is None:
        if which == "LM":
            c = torch.zeros(B, dtype=op.dtype, device=op.device)
        else:
            c, used = spectral_norm_estimate(op, generator)
    else:
        c = torch.as_tensor(shift, dtype=op.dtype, device=op.device).expand(B)
        if not bool(torch.isfinite(c).all()):
            raise ValueError(f"shift must be finite, got {shift!r}.")
    sign = -1.0 if which == "SA" else 1.0

    block = randn(op, (B, p, d), generator)
    if v0 is not None:
        if not isinstance(v0, torch.Tensor) or v0.dim() not in (1 + len(op.shape), 2 + len(op.shape)):
            raise ValueError(f"v0 must have shape [B, *shape] or [B, j, *shape] with shape={op.shape}.")
        start = v0.detach().to(device=op.device, dtype=op.dtype).reshape(B, -1, d)
        if start.shape[1] > p or not bool(torch.isfinite(start).all()):
            raise ValueError(f"v0 must hold at most block_size = {p} finite vectors per sample.")
        block[:, : start.shape[1]] = start
    Q = torch.linalg.qr(block.mT).Q  # [B, d, p]

    for it in range(max_iters):
        Y = apply_flat(op, Q.mT).mT
        H = Q.mT @ Y
        theta, W = torch.linalg.eigh((0.5 * (H + H.mT)).double())
        W = W.to(op.dtype)
        X, AX = Q @ W, Y @ W
        res = torch.linalg.vector_norm(AX - X * theta.to(op.dtype)[:, None, :], dim=1)
        idx = select(theta, k, which)
        values, residuals = theta.gather(-1, idx), res.gather(-1, idx)
        converged = residuals <= tol * theta.abs().amax(-1, keepdim=True).to(op.dtype)
        if bool(converged.all()) or it + 1 == max_iters or (interrupt is not None and interrupt()):
            break
        Q = torch.linalg.qr(sign * AX + c[:, None, None] * X).Q

    vectors = None
    if return_eigenvectors:
        vectors = X.gather(-1, idx[:, None, :].expand(-1, d, -1)).mT.reshape(B, k, *op.shape)
    return SpectrumResult(
        eigenvalues=values.to(op.dtype),
        eigenvectors=vectors,
        residuals=residuals,
        num_matvecs=used + p * (it + 1),
        converged=converged,
        which=which,
    )
