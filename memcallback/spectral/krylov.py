"""A fixed-budget Lanczos run: both ends of the spectrum from one Krylov space, a fixed number of products."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from memcallback.spectral._common import (
    apply_flat,
    check_operator,
    check_positive_int,
    check_which,
    rademacher,
    randn,
    select,
)
from memcallback.spectral.jacobian import JacobianOperator
from memcallback.spectral.lanczos import _start_vector, block_tridiagonal, lanczos_tridiagonal
from memcallback.spectral.operators import BatchedOperator
from memcallback.spectral.results import SpectrumResult, TraceResult


@dataclass
class KrylovRun:
    """The Lanczos tridiagonal and basis of a fixed-budget run, per sample.

    ``A Q = Q T + beta_n q_{n+1} e_n^T`` (plus couplings below rounding at block ends, where a broken-down
    recurrence restarted), so every Ritz pair ``(theta_i, Q s_i)`` of ``T`` has the residual
    ``||A u_i - theta_i u_i|| = |beta_n s_{n,i}|``, whichever end of the spectrum it belongs to.

    Attributes:
        alpha: ``[B, n]`` float64 diagonal of ``T``.
        beta: ``[B, n]`` float64 couplings; ``beta[:, -1]`` couples to the next (untaken) step.
        ends: ``[B, n]`` bool, where the recurrence broke down and restarted.
        basis: ``[B, n, d]`` orthonormal Lanczos vectors ``Q``.
        shape: per-sample vector shape.
        num_matvecs: operator applications per sample (= steps taken ``n``).
    """

    alpha: torch.Tensor
    beta: torch.Tensor
    ends: torch.Tensor
    basis: torch.Tensor
    shape: tuple[int, ...]
    num_matvecs: int

    def ritz(self, k: int, which: str = "LA", tol: float = 1e-2, return_eigenvectors: bool = False) -> SpectrumResult:
        """The ``k`` wanted Ritz pairs of the run.

        Args:
            k: number of pairs; when fewer than ``k`` steps were taken (an interrupted run) the missing
                ones are NaN with infinite residual.
            which: ``"LA"``, ``"SA"`` or ``"LM"`` (sorted as :class:`SpectrumResult` says).
            tol: ``converged`` marks pairs with ``residual <= tol * max_i |theta_i|``.
            return_eigenvectors: also return the Ritz vectors ``[B, k, *shape]``.

        Returns:
            :class:`SpectrumResult` with ``num_matvecs`` = the run's steps.
        """
        which = check_which(which)
        B, n = self.alpha.shape
        dtype = self.basis.dtype
        theta, S = torch.linalg.eigh(block_tridiagonal(self.alpha, self.beta, self.ends))
        got = min(k, n)
        idx = select(theta, got, which)
        values = theta.gather(-1, idx)
        residuals = (self.beta[:, -1:] * S[:, -1, :]).abs().gather(-1, idx)
        converged = residuals <= tol * theta.abs().amax(-1, keepdim=True)
        vectors = None
        if return_eigenvectors:
            coeffs = S.gather(-1, idx[:, None, :].expand(-1, n, -1)).to(dtype)
            vectors = torch.einsum("bnd,bnk->bkd", self.basis, coeffs)
        if got < k:
            pad = k - got
            values = torch.nn.functional.pad(values, (0, pad), value=float("nan"))
            residuals = torch.nn.functional.pad(residuals, (0, pad), value=float("inf"))
            converged = torch.nn.functional.pad(converged, (0, pad), value=False)
            if vectors is not None:
                vectors = torch.nn.functional.pad(vectors, (0, 0, 0, pad))
        return SpectrumResult(
            eigenvalues=values.to(dtype),
            eigenvectors=None if vectors is None else vectors.reshape(B, k, *self.shape),
            residuals=residuals.to(dtype),
            num_matvecs=self.num_matvecs,
            converged=converged,
            which=which,
        )


def krylov_run(
    op: BatchedOperator,
    num_steps: int,
    v0: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    interrupt: Callable[[], bool] | None = None,
) -> KrylovRun:
    """Exactly ``num_steps`` Lanczos steps (one operator call each), with full reorthogonalization.

    Unlike :func:`lanczos` there is no convergence test and no early exit: the number and order of
    operator calls depend only on ``num_steps`` (and on ``interrupt``), never on the data, as a sharded
    network (where every forward is a collective) needs. The top and the bottom of the spectrum come
    from the same tridiagonal (:meth:`KrylovRun.ritz`), each with its residual: Lanczos converges at
    both ends at once, so the most negative eigenvalue costs no second solve. A breakdown (an invariant
    Krylov space) restarts the recurrence from a random orthogonal vector at no extra call.

    Args:
        op: symmetric :class:`BatchedOperator`.
        num_steps: steps ``n`` (capped at ``op.dim``).
        v0: warm start ``[B, *shape]`` or ``[B, j, *shape]`` (e.g. the previous check's Ritz vectors,
            normalized and summed into one start vector); ``None`` for a random normal start.
        generator: for the random start and breakdown restarts.
        interrupt: called after every step; once it returns True the run stops there (fewer steps).

    Returns:
        :class:`KrylovRun`.
    """
    op = check_operator(op)
    check_positive_int("num_steps", num_steps)
    start = _start_vector(op, v0, generator)

    def stop(alpha: torch.Tensor, beta: torch.Tensor, ends: torch.Tensor) -> bool:
        return interrupt is not None and bool(interrupt())

    alpha, beta, ends, Q = lanczos_tridiagonal(op, start[:, None], min(num_steps, op.dim), generator, stop)
    return KrylovRun(alpha=alpha[:, 0], beta=beta[:, 0], ends=ends[:, 0], basis=Q[:, 0], shape=op.shape,
                     num_matvecs=alpha.shape[-1])


def deflated_trace(
    op: BatchedOperator, run: KrylovRun, num_probes: int, generator: torch.Generator | None = None
) -> TraceResult:
    """``tr A`` per sample: exact on the Krylov space of ``run``, Hutchinson on its complement.

    With ``P = I - Q Q^T`` (``Q = run.basis``) ``tr A = tr(Q^T A Q) + tr(P A P)``; the first term is
    ``sum_j alpha_j`` (``T = Q^T A Q`` under full reorthogonalization), the second is estimated with
    projected Rademacher probes, ``E[(P z)^T A (P z)] = tr(P A P)``, unbiased since ``Q`` does not depend
    on ``z`` (a Hutch++-style split). The Krylov space holds the extreme eigendirections, which carry most
    of ``||A||_F``, so the variance drops when a few eigenvalues stand out; for ``A`` close to a multiple
    of ``I`` the projection adds a variance of about ``2 n c^2`` per probe that plain Rademacher probes
    do not have. ``op`` may be any operator with the same symmetric part as the run's (e.g. the
    ``"JT"`` view of a Jacobian: one product per probe).

    Args:
        op: :class:`BatchedOperator` of the same samples as ``run``.
        run: a :class:`KrylovRun` of ``op``'s symmetric part.
        num_probes: projected probes per sample.
        generator: probe randomness.

    Returns:
        :class:`TraceResult` (``num_matvecs`` = ``num_probes``; the run's own products not included).
    """
    op = check_operator(op)
    check_positive_int("num_probes", num_probes)
    B, d = op.batch_size, op.dim
    Q = run.basis
    Z = rademacher(op, (B, num_probes, d), generator)
    Z = Z - torch.einsum("bnd,bpn->bpd", Q, torch.einsum("bnd,bpd->bpn", Q, Z))
    forms = (Z * apply_flat(op, Z)).sum(-1)
    estimate = run.alpha.sum(-1).to(forms) + forms.mean(1)
    stderr = forms.std(1) / math.sqrt(num_probes) if num_probes > 1 else torch.full_like(estimate, math.inf)
    return TraceResult(estimate=estimate, stderr=stderr, num_matvecs=num_probes)


def transpose_krylov(
    op: JacobianOperator,
    k: int,
    num_steps: int,
    *,
    bottom: bool = True,
    tol: float = 1e-2,
    v0: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    interrupt: Callable[[], bool] | None = None,
) -> tuple[SpectrumResult, SpectrumResult | None]:
    """Both ends of the spectrum of ``S = (J + J^T) / 2`` by Rayleigh-Ritz on the Krylov space of ``J^T``.

    Arnoldi on ``J^T`` (one ``J^T q`` per step, full reorthogonalization) builds an orthonormal ``Q`` and
    ``W = J^T Q``, so ``Q^T S Q = (H + H^T) / 2`` with ``H = Q^T W`` needs no ``J`` product. Its eigenpairs
    ``(theta, y)`` give Ritz pairs ``(theta, u = Q y)`` of ``S`` on ``span(Q)``: for a symmetric ``J``
    exactly the Lanczos ones; for a nearly symmetric ``J`` the space is close to the Krylov space of ``S``.
    The residual ``S u - theta u = (J u + W y) / 2 - theta u`` is exact, from one batched ``J u`` of the
    wanted Ritz vectors after the last step. Cost per sample: ``num_steps + k (+1 with bottom)`` products,
    against ``2 num_steps`` for Lanczos on ``S``; the calls are fixed by the arguments alone.

    Args:
        op: the :class:`JacobianOperator` of ``J``.
        k: top Ritz pairs (largest algebraic).
        num_steps: Arnoldi steps (capped at ``op.dim``).
        bottom: also return the smallest Ritz pair.
        tol: ``converged`` marks pairs with ``residual <= tol * max_i |theta_i|``.
        v0: warm start ``[B, *shape]`` or ``[B, j, *shape]`` (normalized and summed into one vector).
        generator: for the random start and breakdown restarts.
        interrupt: called after every step; once it returns True the run stops there and the residual
            product is skipped (residuals ``inf``; missing values NaN).

    Returns:
        ``(top, bottom)`` :class:`SpectrumResult` (``top`` with eigenvectors; ``bottom`` None unless asked).
    """
    if not isinstance(op, JacobianOperator):
        raise TypeError(f"op must be a JacobianOperator (from jacobian_operator), got {type(op).__name__}.")
    check_positive_int("num_steps", num_steps)
    B, d, dtype = op.batch_size, op.dim, op.dtype
    n = min(num_steps, d)
    Q = torch.zeros(B, n, d, dtype=dtype, device=op.device)
    W = torch.zeros_like(Q)
    Q[:, 0] = _start_vector(op, v0, generator)
    adjoint, eps, cut = op.view("JT"), torch.finfo(dtype).eps, False
    for j in range(n):
        W[:, j] = apply_flat(adjoint, Q[:, j : j + 1])[:, 0]
        cut = interrupt is not None and bool(interrupt())
        if cut or j + 1 == n:
            Q, W = Q[:, : j + 1], W[:, : j + 1]
            break
        w = W[:, j]
        for _ in range(2):
            w = w - torch.einsum("bnd,bn->bd", Q[:, : j + 1], torch.einsum("bnd,bd->bn", Q[:, : j + 1], w))
        norm = torch.linalg.vector_norm(w, dim=-1, keepdim=True)
        broken = norm <= eps**0.5 * torch.linalg.vector_norm(W[:, j], dim=-1, keepdim=True)
        if bool(broken.any()):  # an invariant subspace: continue from a random orthogonal vector
            r = randn(op, (B, d), generator)
            for _ in range(2):
                r = r - torch.einsum("bnd,bn->bd", Q[:, : j + 1], torch.einsum("bnd,bd->bn", Q[:, : j + 1], r))
            w = torch.where(broken, r / torch.linalg.vector_norm(r, dim=-1, keepdim=True), w / norm.clamp_min(eps))
        else:
            w = w / norm
        Q[:, j + 1] = w
    taken = Q.shape[1]
    H = torch.einsum("bid,bjd->bij", Q, W).double()
    theta, Y = torch.linalg.eigh(0.5 * (H + H.mT))
    wanted = [select(theta, min(k, taken), "LA")] + ([select(theta, 1, "SA")] if bottom else [])
    idx = torch.cat(wanted, dim=-1)
    coeffs = Y.gather(-1, idx[:, None, :].expand(-1, taken, -1)).to(dtype)
    U = torch.einsum("bnd,bnm->bmd", Q, coeffs)
    values = theta.gather(-1, idx)
    if cut:
        residuals = torch.full_like(values, torch.inf)
    else:
        JU = apply_flat(op.view("J"), U)
        R = 0.5 * (JU + torch.einsum("bnd,bnm->bmd", W, coeffs)) - values.to(dtype)[..., None] * U
        residuals = torch.linalg.vector_norm(R, dim=-1).double()
    converged = residuals <= tol * theta.abs().amax(-1, keepdim=True)
    products = taken + (0 if cut else idx.shape[1])

    def result(cols: slice, size: int, which: str, vectors: bool) -> SpectrumResult:
        pad = size - (cols.stop - cols.start)
        v, r, c = values[:, cols], residuals[:, cols], converged[:, cols]
        v = torch.nn.functional.pad(v, (0, pad), value=float("nan"))
        r = torch.nn.functional.pad(r, (0, pad), value=float("inf"))
        c = torch.nn.functional.pad(c, (0, pad), value=False)
        u = torch.nn.functional.pad(U[:, cols], (0, 0, 0, pad)).reshape(B, size, *op.shape) if vectors else None
        return SpectrumResult(eigenvalues=v.to(dtype), eigenvectors=u, residuals=r.to(dtype), num_matvecs=products,
                              converged=c, which=which)

    top_count = wanted[0].shape[1]
    top = result(slice(0, top_count), k, "LA", True)
    return top, (result(slice(top_count, top_count + 1), 1, "SA", False) if bottom else None)
