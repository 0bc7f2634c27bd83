"""Batched Lanczos with full reorthogonalization."""

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


def tridiagonal(alpha: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """``T = diag(alpha) + diag(beta, 1) + diag(beta, -1)`` from ``alpha [..., n]``, ``beta [..., n-1]``."""
    T = torch.diag_embed(alpha)
    return T + torch.diag_embed(beta, offset=1) + torch.diag_embed(beta, offset=-1)


def lanczos_tridiagonal(
    op: BatchedOperator,
    start: torch.Tensor,
    num_iters: int,
    generator: torch.Generator | None,
    stop: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], bool] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Runs ``P`` independent Lanczos recurrences per sample, one operator call per step.

    Step ``j`` computes ``w = A q_j - alpha_j q_j - beta_{j-1} q_{j-1}`` with
    ``alpha_j = <q_j, A q_j>``, removes the components along all previous ``q`` (classical Gram-Schmidt,
    applied twice), and sets ``beta_j = ||w||``, ``q_{j+1} = w / beta_j``. Then ``Q^T A Q = T``
    (tridiagonal). On breakdown (``beta_j <= sqrt(eps) ||T||``: the Krylov space is invariant, a
    "block end") the recurrence restarts from a random vector orthogonal to all previous ones, and
    ``T`` is block-diagonal: its off-diagonal entry at a block end is 0.

    Args:
        op: the operator (assumed symmetric).
        start: ``[B, P, d]`` unit start vectors.
        num_iters: maximum number of steps (``<= op.dim``).
        generator: for restart vectors.
        stop: ``stop(alpha, beta, ends)`` (each ``[B, P, j+1]``) called after each step, before any
            restart; ``beta[..., -1]`` is the current step's residual coupling and ``ends[..., -1]``
            says whether it broke down. Return True to stop.

    Returns:
        ``(alpha, beta, ends, Q)``: ``[B, P, n]`` float64 diagonal, raw couplings ``beta_j`` and bool
        block ends, and the basis ``[B, P, n, d]``, for the ``n`` steps taken. The off-diagonal of
        ``T`` is ``beta[..., :-1]`` with zeros where ``ends[..., :-1]``.
    """
    B, P, d = start.shape
    Q = torch.zeros(B, P, num_iters, d, dtype=op.dtype, device=op.device)
    Q[:, :, 0] = start
    alpha = torch.zeros(B, P, num_iters, dtype=torch.float64, device=op.device)
    beta = torch.zeros_like(alpha)
    ends = torch.zeros_like(alpha, dtype=torch.bool)
    eps = torch.finfo(op.dtype).eps
    for j in range(num_iters):
        q = Q[:, :, j]
        w = apply_flat(op, q)
        a = (w * q).sum(-1)
        w = w - a[..., None] * q
        if j > 0:
            coupling = torch.where(ends[:, :, j - 1], 0.0, beta[:, :, j - 1]).to(op.dtype)
            w = w - coupling[..., None] * Q[:, :, j - 1]
        basis = Q[:, :, : j + 1]
        for _ in range(2):
            w = w - torch.einsum("bpkd,bpk->bpd", basis, torch.einsum("bpkd,bpd->bpk", basis, w))
        b = torch.linalg.vector_norm(w, dim=-1)
        alpha[:, :, j], beta[:, :, j] = a.double(), b.double()
        # Gershgorin bound on ||T||, used only as the scale of the breakdown test.
        off = torch.where(ends[:, :, : j + 1], 0.0, beta[:, :, : j + 1])
        scale = (alpha[:, :, : j + 1].abs() + off + torch.nn.functional.pad(off[..., :-1], (1, 0))).amax(-1)
        ends[:, :, j] = beta[:, :, j] <= eps**0.5 * scale
        done = stop is not None and stop(alpha[:, :, : j + 1], beta[:, :, : j + 1], ends[:, :, : j + 1])
        if done or j + 1 == num_iters:
            return alpha[:, :, : j + 1], beta[:, :, : j + 1], ends[:, :, : j + 1], Q[:, :, : j + 1]
        broken = ends[:, :, j]
        if bool(broken.any()):
            r = randn(op, (B, P, d), generator)
            for _ in range(2):
                r = r - torch.einsum("bpkd,bpk->bpd", basis, torch.einsum("bpkd,bpd->bpk", basis, r))
            r = r / torch.linalg.vector_norm(r, dim=-1, keepdim=True)
            w = torch.where(broken[..., None], r, w / torch.where(broken, 1.0, b)[..., None])
        else:
            w = w / b[..., None]
        Q[:, :, j + 1] = w
    raise AssertionError("unreachable")


def block_tridiagonal(alpha: torch.Tensor, beta: torch.Tensor, ends: torch.Tensor) -> torch.Tensor:
    """``T`` from :func:`lanczos_tridiagonal` outputs (zero couplings at block ends)."""
    return tridiagonal(alpha, torch.where(ends[..., :-1], 0.0, beta[..., :-1]))


def _ritz(
    alpha: torch.Tensor, beta: torch.Tensor, ends: torch.Tensor, k: int, which: str, tol: float, dim: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Wanted Ritz values, residuals, per-sample convergence and coefficients (``Q^T u``).

    The residual of Ritz pair ``i`` of a block ending at step ``e`` is ``|beta_e s_{last, i}|``. A
    wanted pair has converged when its residual is ``<= tol * max |theta|`` and, if the recurrence
    broke down, the restart confirmed the sample's result: an exhausted block restarts (an exactly
    repeated eigenvalue has one copy per Krylov space; the next block may hold another), and the
    sample stops once an exhausted block adds nothing to the wanted values, or once a non-exhausted
    block's own extreme Ritz value has converged.

    Args:
        alpha, beta, ends: ``[B, n]`` from :func:`lanczos_tridiagonal`.

    Returns:
        ``(values [B, k], residuals [B, k], converged [B, k], coeffs [B, n, k])``, float64 (bool).
    """
    B, n = alpha.shape
    if not bool(ends.any()):
        theta, S = torch.linalg.eigh(tridiagonal(alpha, beta[:, :-1]))
        idx = select(theta, k, which)
        residuals = (beta[:, -1:] * S[:, -1, :]).abs().gather(-1, idx)
        converged = residuals <= tol * theta.abs().amax(-1, keepdim=True)
        return theta.gather(-1, idx), residuals, converged, S.gather(-1, idx[:, None, :].expand(-1, n, -1))
    values, residuals, oks, coeffs = [], [], [], []
    for b in range(B):
        bounds = (torch.nonzero(ends[b, :-1]).flatten() + 1).tolist()
        thetas, resids, S_full, block = [], [], torch.zeros(n, n, dtype=alpha.dtype, device=alpha.device), []
        for i, (lo, hi) in enumerate(zip([0, *bounds], [*bounds, n], strict=True)):
            th, S = torch.linalg.eigh(tridiagonal(alpha[b, lo:hi], beta[b, lo : hi - 1]))
            thetas.append(th)
            resids.append((beta[b, hi - 1] * S[-1]).abs())
            S_full[lo:hi, lo:hi] = S
            block += [i] * (hi - lo)
        theta, res = torch.cat(thetas), torch.cat(resids)
        current = torch.tensor(block, device=alpha.device) == len(bounds)
        idx = select(theta, k, which)
        scale = theta.abs().max()
        converged = res[idx] <= tol * scale
        ok = True
        if bool(ends[b, -1]) and n < dim:
            previous = theta[~current]
            ok = ok and previous.numel() >= k
            ok = ok and bool(((previous[select(previous, k, which)] - theta[idx]).abs() <= tol * scale).all())
        elif bounds and not bool(ends[b, -1]):
            extreme = select(theta[current], 1, which)
            ok = ok and bool((res[current][extreme] <= tol * scale).all())
        values.append(theta[idx])
        residuals.append(res[idx])
        oks.append(converged & ok)
        coeffs.append(S_full[:, idx])
    return torch.stack(values), torch.stack(residuals), torch.stack(oks), torch.stack(coeffs)


def _start_vector(op: BatchedOperator, v0: torch.Tensor | None, generator: torch.Generator | None) -> torch.Tensor:
    """Unit start vectors ``[B, d]`` from ``v0`` (see :func:`lanczos`) or a random normal draw."""
    B, d = op.batch_size, op.dim
    if v0 is None:
        v = randn(op, (B, d), generator)
    else:
        n = len(op.shape)
        if not isinstance(v0, torch.Tensor) or not (
            (v0.dim() == 1 + n and v0.shape == (B, *op.shape))
            or (v0.dim() == 2 + n and v0.shape[0] == B and v0.shape[1] >= 1 and v0.shape[2:] == op.shape)
        ):
            got = list(v0.shape) if isinstance(v0, torch.Tensor) else type(v0).__name__
            raise ValueError(f"v0 must have shape [B, *shape] or [B, j, *shape] (B={B}, shape={op.shape}); got {got}.")
        v = v0.detach().to(device=op.device, dtype=op.dtype).reshape(B, -1, d)
        if not bool(torch.isfinite(v).all()):
            raise ValueError("v0 contains NaN/inf; pass finite start vectors (or v0=None).")
        v = (v / torch.linalg.vector_norm(v, dim=-1, keepdim=True).clamp_min(torch.finfo(op.dtype).tiny)).sum(1)
    norm = torch.linalg.vector_norm(v, dim=-1, keepdim=True)
    if not bool((norm > 0).all()):
        bad = torch.nonzero(norm.flatten() == 0).flatten().tolist()
        raise ValueError(f"v0 is zero (or its vectors cancel) for sample(s) {bad[:10]}; pass a non-zero start.")
    return v / norm


def lanczos(
    op: BatchedOperator,
    k: int,
    which: str = "LA",
    num_iters: int | None = None,
    tol: float = 1e-4,
    v0: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    return_eigenvectors: bool = False,
    *,
    interrupt: Callable[[], bool] | None = None,
) -> SpectrumResult:
    """``k`` extreme eigenpairs of a symmetric batched operator by Lanczos, per sample.

    After ``m`` steps, ``A Q_m = Q_m T_m + beta_m q_{m+1} e_m^T``; the Ritz pairs
    ``(theta_i, Q_m s_i)`` of the tridiagonal ``T_m`` (eigendecomposed in float64) approximate
    eigenpairs of ``A`` with residual ``||A u_i - theta_i u_i|| = |beta_m s_{m,i}|``. Sample ``b``
    has converged when all ``k`` wanted residuals are ``<= tol * ||T_m||_2`` (``||T_m||_2 =
    max_i |theta_i|``, an estimate of ``||A||_2`` from below); iteration stops when every sample has
    converged or after ``num_iters`` steps. Every step is one batched operator call (one product per
    sample). Full reorthogonalization keeps ``Q`` orthonormal, so no spurious copies appear.

    Args:
        op: symmetric :class:`BatchedOperator` (e.g. ``jacobian_operator(fn, x)``).
        k: number of eigenpairs, ``1 <= k <= op.dim``.
        which: ``"LA"`` largest algebraic, ``"SA"`` smallest algebraic, ``"LM"`` largest magnitude.
        num_iters: maximum number of steps; default ``min(d, max(2k + 20, 150))``; capped at ``d``.
        tol: relative residual tolerance.
        v0: warm start, ``[B, *shape]`` or ``[B, j, *shape]`` (e.g. the previous check's eigenvectors).
            Several vectors are normalized and summed into one start vector: if they span an invariant
            subspace, the wanted Ritz pairs converge within ``j`` steps.
        generator: for the random start (when ``v0`` is None) and breakdown restarts. Draws happen on
            ``generator.device`` and are moved to ``op.device``: a CPU generator gives the same numbers
            on every device, and bit-identical results on CPU.
        return_eigenvectors: also return the Ritz vectors ``[B, k, *shape]``.
        interrupt: called after every step; once it returns True iteration stops there (the wanted
            values are NaN, with infinite residuals and no eigenvectors, if fewer than ``k`` steps were
            taken). For a fixed number of steps and no convergence test see
            :func:`memcallback.spectral.krylov_run`.

    A single Krylov space holds one copy of an exactly repeated eigenvalue. When the recurrence breaks
    down (an invariant subspace, e.g. an exact warm start or a repeated eigenvalue) it restarts from a
    random orthogonal vector, and the sample counts as converged only once the restart confirms the
    result (see ``_ritz``): exact multiplicities come out right, at the price of extra steps after an
    exact warm start (about as many as the next eigenvalue needs).

    Returns:
        :class:`SpectrumResult` (eigenvalues descending for LA, by descending magnitude for LM,
        ascending for SA).

    Raises:
        TypeError: ``op`` is not a :class:`BatchedOperator`.
        ValueError: unknown ``which``, ``k`` out of range, bad ``num_iters``/``tol``/``v0``.
        FloatingPointError: the operator returned NaN/inf (the message names the samples).
    """
    op = check_operator(op)
    which = check_which(which)
    k = check_k(k, op.dim)
    if num_iters is None:
        num_iters = min(op.dim, max(2 * k + 20, 150))
    check_positive_int("num_iters", num_iters)
    if num_iters < k:
        raise ValueError(f"num_iters must be >= k = {k} (k Ritz values need k steps), got {num_iters}.")
    if not tol >= 0:
        raise ValueError(f"tol must be >= 0, got {tol!r}.")
    num_iters = min(num_iters, op.dim)
    start = _start_vector(op, v0, generator)

    def stop(alpha: torch.Tensor, beta: torch.Tensor, ends: torch.Tensor) -> bool:
        if interrupt is not None and interrupt():
            return True
        if alpha.shape[-1] < k:
            return False
        return bool(_ritz(alpha[:, 0], beta[:, 0], ends[:, 0], k, which, tol, op.dim)[2].all())

    alpha, beta, ends, Q = lanczos_tridiagonal(op, start[:, None], num_iters, generator, stop)
    if alpha.shape[-1] < k:  # interrupted early
        B, nan = op.batch_size, float("nan")
        return SpectrumResult(
            eigenvalues=torch.full((B, k), nan, dtype=op.dtype, device=op.device),
            eigenvectors=None,
            residuals=torch.full((B, k), torch.inf, dtype=op.dtype, device=op.device),
            num_matvecs=alpha.shape[-1],
            converged=torch.zeros(B, k, dtype=torch.bool, device=op.device),
            which=which,
        )
    values, residuals, converged, coeffs = _ritz(alpha[:, 0], beta[:, 0], ends[:, 0], k, which, tol, op.dim)
    vectors = None
    if return_eigenvectors:
        vectors = torch.einsum("bnd,bnk->bkd", Q[:, 0], coeffs.to(op.dtype)).reshape(op.batch_size, k, *op.shape)
    return SpectrumResult(
        eigenvalues=values.to(op.dtype),
        eigenvectors=vectors,
        residuals=residuals.to(op.dtype),
        num_matvecs=alpha.shape[-1],
        converged=converged,
        which=which,
    )
