"""Dense path: the full per-sample Jacobian and its eigendecomposition (reference; fast for tiny d)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from memcallback.spectral._common import check_points
from memcallback.spectral.jacobian import _check_fn_output
from memcallback.spectral.results import SpectrumResult


def _check_x(x: object) -> None:
    check_points(x)
    finite = torch.isfinite(x.reshape(x.shape[0], -1)).all(dim=1)
    if not bool(finite.all()):
        raise ValueError(f"x contains NaN/inf for sample(s) {torch.nonzero(~finite).flatten().tolist()[:10]}.")


def dense_jacobian(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Full Jacobian ``J_b = d fn(x)_b / d x_b`` of a per-sample function, for every sample.

    Computed as ``vmap(jacrev(lambda xi: fn(xi[None])[0]))(x)``: ``d`` reverse passes per sample,
    vectorized. ``fn`` must be vmappable (no ``.item()``, no data-dependent control flow, no
    BatchNorm in train mode). Works under ``torch.no_grad()`` / ``torch.inference_mode()``.

    Args:
        fn: per-sample function ``[B, *shape] -> [B, *shape]``.
        x: ``[B, *shape]`` points.

    Returns:
        ``[B, d, d]`` detached, ``J[b, i, j] = d fn(x)[b, i] / d x[b, j]`` over flattened indices.

    Raises:
        ValueError: on a non-tensor / wrong-shape / non-finite ``x``, or ``fn(x)`` of another shape or
            non-finite.
    """
    if not callable(fn):
        raise ValueError(f"fn must be callable ([B, *shape] -> [B, *shape]), got {type(fn).__name__}.")
    _check_x(x)
    B, d = x.shape[0], x[0].numel()
    with torch.inference_mode(False), torch.enable_grad():
        x = x.detach().clone()
        with torch.no_grad():
            _check_fn_output(fn(x), x, 0)
        jac = torch.func.vmap(torch.func.jacrev(lambda xi: fn(xi[None])[0]))(x)
    return jac.reshape(B, d, d).detach()


def dense_spectrum(
    fn: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    symmetrize: bool = True,
    return_eigenvectors: bool = False,
) -> SpectrumResult:
    """All ``d`` eigenvalues (descending) of ``S = (J + J^T) / 2`` per sample, by ``eigh``.

    Args:
        fn: per-sample function ``[B, *shape] -> [B, *shape]``.
        x: ``[B, *shape]`` points.
        symmetrize: if False, ``J`` itself is decomposed and assumed symmetric (``eigh`` reads only its
            lower triangle): use only for exact gradient fields.
        return_eigenvectors: also return the eigenvectors ``[B, d, *shape]``.

    Returns:
        A :class:`SpectrumResult` with ``k = d``, ``which="LA"``, residuals ``||S u - lambda u||``,
        ``converged`` all True and ``num_matvecs = d`` (one reverse pass per Jacobian row).
    """
    J = dense_jacobian(fn, x)
    S = 0.5 * (J + J.mT) if symmetrize else J
    evals, evecs = torch.linalg.eigh(S)
    evals, evecs = evals.flip(-1), evecs.flip(-1)
    S_full = S if symmetrize else torch.tril(S) + torch.tril(S, -1).mT
    residuals = torch.linalg.vector_norm(S_full @ evecs - evecs * evals[:, None, :], dim=1)
    B, d = evals.shape
    return SpectrumResult(
        eigenvalues=evals,
        eigenvectors=evecs.mT.reshape(B, d, *x.shape[1:]) if return_eigenvectors else None,
        residuals=residuals,
        num_matvecs=d,
        converged=torch.ones(B, d, dtype=torch.bool, device=evals.device),
        which="LA",
    )
