"""The matrix-free measurement: Jacobian products part by part, each skipped once the interrupt has fired."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

import torch
from torch import Tensor

from memcallback.spectral import (
    JacobianOperator,
    KrylovRun,
    SpectrumResult,
    deflated_trace,
    hutchinson_trace,
    krylov_run,
    lanczos,
    power_iteration,
    transpose_krylov,
)

if TYPE_CHECKING:
    from memcallback.measure.sharpness import SharpnessConfig

#: A direction with ``mu`` above this counts as flat (along the data) in ``flat_count``.
FLAT_MU = 0.5


class Interrupt:
    """A latch over an interrupt callable: asks ``fn`` until it first returns True, then stays True.

    Once fired, ``fn`` is never called again, so the units of work after it are all skipped, and under
    several ranks (where ``fn`` is a collective) every rank stops calling it at the same point.

    Attributes:
        fired: whether ``fn`` has returned True.
    """

    def __init__(self, fn: Callable[[], bool] | None = None):
        self.fn = fn
        self.fired = False

    def __call__(self) -> bool:
        if not self.fired and self.fn is not None:
            self.fired = bool(self.fn())
        return self.fired


class Measured(NamedTuple):
    """What a solver path measured, before normalization and scoring (``sigma^2``-scaled where named ``_mu``)."""

    eigenvalues: Tensor  # [B, >=k] descending
    min_mu: Tensor
    min_mu_residual: Tensor
    trace_mu: Tensor
    flat_count: Tensor
    hs_norm: Tensor  # ||J s||
    asymmetry: Tensor
    converged: Tensor
    ritz_residual: Tensor
    eigenvectors: Tensor | None
    products: dict[str, int]


def measure_matrix_free(op: JacobianOperator, s: Tensor, s2: float, config: SharpnessConfig, v0: Tensor | None,
                        generator: torch.Generator | None, stop: Interrupt) -> Measured:
    """Statistics from Jacobian products of ``op``, part by part, each skipped once ``stop`` has fired.

    The parts run in the order of ``SharpnessStats.products``: ``||J s||`` (``s`` the score at ``op``'s
    points), the spectrum (both ends from one Krylov run under a budget, else top-k then a second solve
    for the bottom), the trace (one ``J^T z`` per probe), the asymmetry. ``stop`` is asked before each
    part and by the solvers after every step.
    """
    B, k = op.batch_size, config.k
    nan = torch.full((B,), float("nan"), dtype=op.dtype, device=op.device)
    products: dict[str, int] = {}

    def spend(part: str, work: Callable[[], object]) -> object:
        before = op.num_jacobian_products
        out = work()
        products[part] = op.num_jacobian_products - before
        return out

    hs_norm = nan
    if not stop():
        hs_norm = spend("hs_norm", lambda: torch.linalg.vector_norm(op.matvec(s.unsqueeze(1)).flatten(1), dim=1))
    top, low, run = None, None, None
    if not stop():
        top, low, run = spend("spectrum", lambda: _spectrum(op, config, s2, v0, generator, stop))
    if config.min_eigenvalue and low is not None:
        products["min_eigenvalue"] = 0  # from the spectrum's own run
    elif config.min_eigenvalue and top is not None and not stop():
        low = spend("min_eigenvalue", lambda: _bottom(op, config, top, generator, stop))
    trace_mu = nan
    if not stop():
        view = op.view("JT")  # z^T J^T z = z^T S z: one reverse pass per probe
        if config.trace_estimator == "deflated":
            trace = spend("trace", lambda: deflated_trace(view, run, config.trace_probes, generator))
        else:
            trace = spend("trace", lambda: hutchinson_trace(view, config.trace_probes, generator))
        trace_mu = s2 * trace.estimate
    asym = nan
    if config.asymmetry_probes > 0 and not stop():
        asym = spend("asymmetry", lambda: op.asymmetry(num_probes=config.asymmetry_probes, generator=generator))
    if top is None:
        values = torch.full((B, k), float("nan"), dtype=op.dtype, device=op.device)
        residual, converged, vectors = nan, torch.zeros(B, dtype=torch.bool, device=op.device), None
    else:
        values, vectors = top.eigenvalues, top.eigenvectors
        residual = s2 * top.residuals.amax(dim=1)
        converged = top.converged.all(dim=1) if config.krylov_steps is None else residual <= config.tol
    min_mu, min_res = (nan, nan) if low is None else (1.0 + s2 * low.eigenvalues[:, 0], s2 * low.residuals[:, 0])
    if low is not None and config.krylov_steps is None:
        converged &= low.converged.all(dim=1)
    flat = (1.0 + s2 * values > FLAT_MU).sum(dim=1)
    return Measured(values, min_mu, min_res, trace_mu, flat, hs_norm, asym, converged, residual, vectors, products)


def _spectrum(op: JacobianOperator, config: SharpnessConfig, s2: float, v0: Tensor | None,
              generator: torch.Generator | None,
              stop: Interrupt) -> tuple[SpectrumResult, SpectrumResult | None, KrylovRun | None]:
    """``(top-k, bottom or None, Krylov run or None)``: the spectrum solve of the configured solver.

    A Krylov budget gives both ends from one run. Power iteration on ``S + I / sigma^2`` (the denoiser
    Jacobian over ``sigma^2``, positive semi-definite when every ``mu >= 0``) finds the top end.
    """
    k, steps = config.k, config.krylov_steps
    if config.solver == "power":
        block = min(op.dim, 2 * k)
        top = power_iteration(op, k, "LA", shift=1.0 / s2, generator=generator, v0=v0, return_eigenvectors=True,
                              block_size=block, interrupt=stop, **_power_budget(config, block))
        return top, None, None
    if steps is None:
        top = lanczos(op, k, "LA", num_iters=config.lanczos_iters, tol=config.tol, v0=v0, generator=generator,
                      return_eigenvectors=True, interrupt=stop)
        return top, None, None
    if config.krylov_product == "JT":
        top, low = transpose_krylov(op, k, steps, bottom=config.min_eigenvalue, tol=config.tol, v0=v0,
                                    generator=generator, interrupt=stop)
        return top, low, None
    run = krylov_run(op, steps, v0=v0, generator=generator, interrupt=stop)
    top = run.ritz(k, "LA", tol=config.tol, return_eigenvectors=True)
    return top, (run.ritz(1, "SA") if config.min_eigenvalue else None), run


def _bottom(op: JacobianOperator, config: SharpnessConfig, top: SpectrumResult, generator: torch.Generator | None,
            stop: Interrupt) -> SpectrumResult:
    """The most negative eigenvalue by a second solve (tol mode, or power iteration on ``c I - S``)."""
    if config.solver == "power":
        block = min(op.dim, 2)
        shift = top.eigenvalues[:, 0].clamp_min(0.0)  # c >= lambda_max makes c I - S positive semi-definite
        return power_iteration(op, 1, "SA", shift=shift, generator=generator, block_size=block, interrupt=stop,
                               **_power_budget(config, block))
    return lanczos(op, 1, "SA", num_iters=config.lanczos_iters, tol=config.tol, generator=generator, interrupt=stop)


def _power_budget(config: SharpnessConfig, block: int) -> dict[str, float]:
    """Power iteration's ``max_iters`` and ``tol``: a fixed budget (``tol=0``: no early exit) or ``config.tol``."""
    if config.krylov_steps is not None:
        return {"max_iters": max(1, config.krylov_steps // block), "tol": 0.0}
    if config.lanczos_iters is not None:
        return {"max_iters": max(1, config.lanczos_iters // block), "tol": config.tol}
    return {"tol": config.tol}
