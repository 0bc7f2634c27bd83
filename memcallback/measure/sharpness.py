"""Per-sample sharpness statistics of the learned density and the memorization score built from them.

At a state ``x_t`` with noise level ``sigma_t`` the learned score ``s = -eps_hat / sigma_t`` has Jacobian
``J = ds/dx``, the Hessian of ``log p_t`` up to the network's asymmetry. Everything here works on the
symmetric part ``S = (J + J^T) / 2`` and reports it in the schedule-free normalized form

    mu_i = 1 + sigma_t^2 lambda_i(S)          (the spectrum of alpha_t times the Tweedie denoiser Jacobian)

with ``mu ~ 1`` along the data (flat directions) and ``mu ~ 0`` across it (sharp directions). At a
memorized training image every direction is sharp, so even the largest ``mu`` are near 0.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import NamedTuple

import torch
from torch import Tensor

from memcallback.arguments import is_int, is_real, require
from memcallback.spectral import dense_jacobian, hutchinson_trace, jacobian_operator, lanczos

SOLVERS = ("auto", "dense", "lanczos")
SCORE_STATISTICS = ("top_mu", "effective_dim", "flat_fraction")
#: ``solver="auto"`` takes the exact dense Jacobian up to this many dimensions (faster there, see benchmarks).
DENSE_MAX_DIM = 256
#: A direction with ``mu`` above this counts as flat (along the data) in ``flat_count``.
FLAT_MU = 0.5


@dataclass(frozen=True)
class SharpnessConfig:
    """How to measure sharpness: solver, budgets and the memorization score.

    Args:
        k: number of flattest directions (largest eigenvalues of S) to resolve.
        solver: ``"dense"`` (full Jacobian + ``eigh``), ``"lanczos"`` (matrix free), or ``"auto"``
            (dense when the data dimension is at most ``DENSE_MAX_DIM``).
        lanczos_iters: Krylov steps per solve (``None``: the solver's default for ``k``).
        tol: relative residual tolerance of the Lanczos solves.
        trace_probes: Rademacher probes for the Hutchinson trace (matrix-free path only).
        asymmetry_probes: probes for the ``||J - J^T||_F / ||J||_F`` estimate (matrix-free path only).
        min_eigenvalue: also solve for the most negative eigenvalue (matrix-free path; free when dense).
        score_statistic: which statistic becomes the memorization score in ``[0, 1]``:
            ``"top_mu"``: ``1 - mean_i clamp(mu_i, 0, 1)`` over the ``k`` flattest directions;
            ``"effective_dim"``: ``1 - clamp(d_eff / d, 0, 1)``;
            ``"flat_fraction"``: ``1 - flat_count / k``.
        flag_threshold: a sample is flagged as memorized when its score exceeds this.
        chunk_size: most vectors sent through the network at once (``None``: all).
    """

    k: int = 8
    solver: str = "auto"
    lanczos_iters: int | None = None
    tol: float = 1e-3
    trace_probes: int = 16
    asymmetry_probes: int = 4
    min_eigenvalue: bool = True
    score_statistic: str = "top_mu"
    flag_threshold: float = 0.39
    chunk_size: int | None = None

    def __post_init__(self) -> None:
        require(is_int(self.k) and self.k >= 1, "k", self.k, "an int >= 1")
        require(isinstance(self.solver, str) and self.solver in SOLVERS, "solver", self.solver, f"one of {SOLVERS}")
        require(self.lanczos_iters is None or (is_int(self.lanczos_iters) and self.lanczos_iters > self.k),
                 "lanczos_iters", self.lanczos_iters, "None or an int larger than k")
        require(is_real(self.tol) and 0 < self.tol < 1, "tol", self.tol, "a float in (0, 1)")
        require(is_int(self.trace_probes) and self.trace_probes >= 2, "trace_probes", self.trace_probes,
                 "an int >= 2")
        require(is_int(self.asymmetry_probes) and self.asymmetry_probes >= 1, "asymmetry_probes",
                 self.asymmetry_probes, "an int >= 1")
        require(isinstance(self.min_eigenvalue, bool), "min_eigenvalue", self.min_eigenvalue, "True or False")
        require(isinstance(self.score_statistic, str) and self.score_statistic in SCORE_STATISTICS,
                 "score_statistic", self.score_statistic, f"one of {SCORE_STATISTICS}")
        require(is_real(self.flag_threshold) and 0 <= self.flag_threshold <= 1,
                 "flag_threshold", self.flag_threshold, "a float in [0, 1]")
        require(self.chunk_size is None or (is_int(self.chunk_size) and self.chunk_size >= 1),
                 "chunk_size", self.chunk_size, "None or an int >= 1")

    def use_dense(self, dim: int) -> bool:
        """Whether the exact dense path is used for data of dimension ``dim``."""
        return self.solver == "dense" or (self.solver == "auto" and dim <= DENSE_MAX_DIM)


@dataclass
class SharpnessStats:
    """Per-sample sharpness at one noise level; every tensor field has a leading batch dimension ``B``.

    Attributes:
        timestep: the diffusion timestep ``t`` of the measurement.
        sigma: the noise level ``sigma_t``.
        eigenvalues: ``[B, k]`` largest eigenvalues of S, descending (the flattest directions).
        mu: ``[B, k]`` their normalized form ``1 + sigma^2 lambda``.
        min_mu: ``[B]`` normalized most negative eigenvalue (the sharpest direction); NaN if not solved.
        trace_mu: ``[B]`` ``sigma^2 tr(S)`` (exact on the dense path, Hutchinson otherwise).
        effective_dim: ``[B]`` ``d + sigma^2 tr(S)``, a local intrinsic dimension estimate (~0 when memorized).
        flat_count: ``[B]`` number of directions with ``mu > 0.5`` (among all d when dense, else among k).
        score_norm_sq: ``[B]`` ``sigma^2 ||s||^2 = ||eps_hat||^2`` (paper, Lemma 4.1: ``E||s||^2 = -tr H``).
        hessian_score_norm: ``[B]`` ``sigma^3 ||J s||`` (paper, Lemma 4.3), normalized like ``mu``.
        asymmetry: ``[B]`` ``||J - J^T||_F / ||J||_F`` (exact when dense, estimated otherwise).
        converged: ``[B]`` whether every requested eigenvalue met the tolerance.
        score: ``[B]`` memorization score in ``[0, 1]``.
        memorized: ``[B]`` ``score > flag_threshold``.
        eigenvectors: ``[B, k, *shape]`` for warm-starting the next measurement (matrix-free path).
        num_matvecs: operator products per sample spent on this measurement.
    """

    timestep: int
    sigma: float
    eigenvalues: Tensor
    mu: Tensor
    min_mu: Tensor
    trace_mu: Tensor
    effective_dim: Tensor
    flat_count: Tensor
    score_norm_sq: Tensor
    hessian_score_norm: Tensor
    asymmetry: Tensor
    converged: Tensor
    score: Tensor
    memorized: Tensor
    eigenvectors: Tensor | None = None
    num_matvecs: int = 0

    #: per-sample scalar statistics, in the order tables and loggers show them.
    SCALARS = ("score", "mu_max", "mu_topk", "min_mu", "effective_dim", "flat_count", "trace_mu",
               "score_norm_sq", "hessian_score_norm", "asymmetry")

    def scalars(self) -> dict[str, Tensor]:
        """``{name: [B] float tensor}`` for every per-sample scalar statistic (``mu_max``: largest mu,
        ``mu_topk``: mean of the k largest)."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values["mu_max"] = self.mu[:, 0]
        values["mu_topk"] = self.mu.mean(dim=1)
        return {name: values[name].float() for name in self.SCALARS}


class _Measured(NamedTuple):
    """What a solver path measured, before normalization and scoring."""

    eigenvalues: Tensor  # [B, >=k] descending
    min_mu: Tensor
    trace_mu: Tensor
    flat_count: Tensor
    hs_norm: Tensor  # ||J s||
    asymmetry: Tensor
    converged: Tensor
    eigenvectors: Tensor | None
    num_matvecs: int


def memorization_score(mu: Tensor, effective_dim: Tensor, flat_count: Tensor, dim: int, statistic: str) -> Tensor:
    """Map sharpness statistics to a per-sample memorization score in ``[0, 1]`` (1 = fully sharp).

    ``top_mu``: ``1 - mean_i clamp(mu_i, 0, 1)``; ``effective_dim``: ``1 - clamp(d_eff / d, 0, 1)``;
    ``flat_fraction``: ``1 - flat_count / k``.
    """
    if statistic == "top_mu":
        return 1.0 - mu.clamp(0.0, 1.0).mean(dim=1)
    if statistic == "effective_dim":
        return 1.0 - (effective_dim / dim).clamp(0.0, 1.0)
    if statistic == "flat_fraction":
        return 1.0 - (flat_count.to(mu.dtype) / mu.shape[1]).clamp(max=1.0)
    raise ValueError(f"score_statistic={statistic!r} is invalid: expected one of {SCORE_STATISTICS}.")


def measure_sharpness(
    score_fn: Callable[[Tensor], Tensor],
    x: Tensor,
    timestep: int,
    sigma: float,
    config: SharpnessConfig,
    *,
    v0: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> SharpnessStats:
    """Measure the sharpness statistics of ``score_fn`` at the states ``x``.

    Args:
        score_fn: per-sample score ``x [B, *shape] -> s(x, t) [B, *shape]`` at a fixed timestep.
        x: ``[B, *shape]`` states (typically the sampler's own trajectory states ``x_t``).
        timestep: the timestep ``t`` (recorded in the result).
        sigma: ``sigma_t``, the noise level that normalizes the spectrum.
        config: solver and score settings.
        v0: optional warm start ``[B, j, *shape]`` for the Lanczos solve (the previous measurement's
            eigenvectors at the same probes and timestep).
        generator: source of all randomness (Lanczos start, Hutchinson and asymmetry probes).

    Returns:
        :class:`SharpnessStats` with one row per sample.
    """
    dim = x[0].numel()
    if config.k > dim:
        raise ValueError(f"k={config.k} is larger than the data dimension {dim}; choose k <= {dim}.")
    if x.dtype in (torch.float16, torch.bfloat16):  # the network runs in its own precision, linear algebra in fp32
        model_dtype, score_fn_lowp = x.dtype, score_fn
        score_fn = lambda z: score_fn_lowp(z.to(model_dtype)).float()  # noqa: E731
        x = x.float()
        v0 = None if v0 is None else v0.float()
    s2 = sigma**2
    with torch.no_grad():
        s = score_fn(x.detach()).detach()
    m = _dense(score_fn, x, s, s2) if config.use_dense(dim) else _matrix_free(score_fn, x, s, s2, config, v0, generator)
    top = m.eigenvalues[:, : config.k]
    mu = 1.0 + s2 * top
    effective_dim = dim + m.trace_mu
    score = memorization_score(mu, effective_dim, m.flat_count, dim, config.score_statistic)
    return SharpnessStats(
        timestep=int(timestep), sigma=float(sigma), eigenvalues=top, mu=mu, min_mu=m.min_mu, trace_mu=m.trace_mu,
        effective_dim=effective_dim, flat_count=m.flat_count, score_norm_sq=s2 * s.flatten(1).square().sum(dim=1),
        hessian_score_norm=sigma**3 * m.hs_norm, asymmetry=m.asymmetry, converged=m.converged, score=score,
        memorized=score > config.flag_threshold, eigenvectors=m.eigenvectors, num_matvecs=m.num_matvecs,
    )


def _dense(score_fn: Callable[[Tensor], Tensor], x: Tensor, s: Tensor, s2: float) -> _Measured:
    """Exact statistics from the full Jacobian (small d)."""
    J = dense_jacobian(score_fn, x)  # [B, d, d]
    bad = (~torch.isfinite(J).flatten(1).all(dim=1)).nonzero().flatten().tolist()
    if bad:  # eigh would fail with an opaque convergence error
        raise FloatingPointError(f"The score's Jacobian has non-finite entries (NaN/inf) for sample(s) {bad}: the "
                                 "network's gradients overflow or are undefined at those states.")
    S = 0.5 * (J + J.mT)
    evals = torch.linalg.eigvalsh(S).flip(-1)  # descending
    mu_all = 1.0 + s2 * evals
    hs_norm = torch.linalg.vector_norm(torch.einsum("bij,bj->bi", J, s.flatten(1)), dim=1)
    asym = torch.linalg.matrix_norm(J - J.mT) / torch.linalg.matrix_norm(J).clamp_min(torch.finfo(J.dtype).tiny)
    trace_mu = s2 * torch.diagonal(J, dim1=1, dim2=2).sum(dim=1)
    flat = (mu_all > FLAT_MU).sum(dim=1)
    converged = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
    return _Measured(evals, mu_all[:, -1], trace_mu, flat, hs_norm, asym, converged, None, J.shape[1])


def _matrix_free(score_fn: Callable[[Tensor], Tensor], x: Tensor, s: Tensor, s2: float, config: SharpnessConfig,
                 v0: Tensor | None, generator: torch.Generator | None) -> _Measured:
    """Statistics from Jacobian-vector products only: Lanczos at both ends, Hutchinson, probes."""
    op = jacobian_operator(score_fn, x, symmetrize=True, chunk_size=config.chunk_size)
    top = lanczos(op, config.k, which="LA", num_iters=config.lanczos_iters, tol=config.tol, v0=v0,
                  generator=generator, return_eigenvectors=True)
    converged = top.converged.all(dim=1)
    matvecs = top.num_matvecs
    min_mu = torch.full((x.shape[0],), float("nan"), dtype=x.dtype, device=x.device)
    if config.min_eigenvalue:
        low = lanczos(op, 1, which="SA", num_iters=config.lanczos_iters, tol=config.tol, generator=generator)
        min_mu = 1.0 + s2 * low.eigenvalues[:, 0]
        converged &= low.converged.all(dim=1)
        matvecs += low.num_matvecs
    trace = hutchinson_trace(op, num_probes=config.trace_probes, generator=generator)
    hs_norm = torch.linalg.vector_norm(op.matvec(s.unsqueeze(1)).flatten(1), dim=1)
    asym = op.asymmetry(num_probes=config.asymmetry_probes, generator=generator)
    flat = (1.0 + s2 * top.eigenvalues > FLAT_MU).sum(dim=1)
    matvecs += trace.num_matvecs + 1 + 2 * config.asymmetry_probes
    return _Measured(top.eigenvalues, min_mu, s2 * trace.estimate, flat, hs_norm, asym, converged,
                     top.eigenvectors, matvecs)
