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
from dataclasses import dataclass, field, fields

import torch
from torch import Tensor

from memcallback.arguments import is_int, is_real, require
from memcallback.measure import names
from memcallback.measure.matrix_free import FLAT_MU, Interrupt, Measured, measure_matrix_free
from memcallback.spectral import JVP_MODES, dense_jacobian, jacobian_operator

SOLVERS = ("auto", "dense", "lanczos", "power")
TRACE_ESTIMATORS = ("hutchinson", "deflated")
KRYLOV_PRODUCTS = ("S", "JT")
SCORE_STATISTICS = ("mean_mu", "top_mu", "effective_dim", "flat_fraction")
#: ``solver="auto"`` takes the exact dense Jacobian up to this many dimensions. It costs ``d`` products per sample
#: against the Krylov budget's 61: on the digits MLP (d = 64) it was 2x faster than Lanczos (docs/benchmarks.md), on
#: a trained 16-channel UNet at d = 256 7-14x slower with the same AUROC (``benchmarks/cost/dense_or_krylov.py``).
DENSE_MAX_DIM = 64


@dataclass(frozen=True)
class SharpnessConfig:
    """How to measure sharpness: solver, budgets and the memorization score.

    The matrix-free path spends its products (unit: one ``J v`` or one ``J^T v`` of one sample; a
    symmetric product ``S v`` counts 2) in this order: ``||J s||`` (1), the spectrum (both ends from one
    Krylov run: ``2 krylov_steps``, or ``krylov_steps + k + 1`` with ``krylov_product="JT"``), the trace
    (``trace_probes``: one ``J^T z`` per probe, since ``z^T J^T z = z^T S z``), the asymmetry
    (``2 asymmetry_probes``). Besides, one forward pass per noise level builds the graph (and gives ``s``).

    Args:
        k: number of flattest directions (largest eigenvalues of S) to resolve.
        solver: ``"dense"`` (full Jacobian + ``eigh``), ``"lanczos"`` or ``"power"`` (matrix free; power
            is shifted subspace iteration with a block of ``2k``), or ``"auto"`` (dense when the data
            dimension is at most ``DENSE_MAX_DIM``, else lanczos).
        krylov_steps: the budget: exactly this many Krylov steps per noise level, no convergence test,
            no restarts, warm-started from the previous check's Ritz vectors; the top-k and the most
            negative eigenvalue come from the same run. Power iteration gets
            ``max(1, krylov_steps // block)`` block iterations per end. ``None``: run to ``tol`` instead
            (the converged reference, e.g. ``krylov_steps=None, tol=1e-6``); it must exceed ``k``. The
            default 26 is the smallest budget that keeps every probe's default score within 0.02 of the
            converged one on the trained 3x32x32 UNets of ``benchmarks/cost/check_cost.py`` (26 steps: 0.014 / 0.013;
            the former default score, ``top_mu`` with ``k=8``, needed 46).
        krylov_product: the Krylov space of the budget: ``"S"`` (Lanczos on the symmetric part, 2 products
            per step) or ``"JT"`` (Arnoldi on ``J^T``, 1 product per step, and Rayleigh-Ritz of ``S`` on that
            space; the ``k + 1`` wanted pairs then take one ``J`` product each for their exact residuals).
        lanczos_iters: with ``krylov_steps=None``: most Lanczos steps per solve (power: most products per
            end, in whole blocks); ``None``: the solver's default.
        tol: with ``krylov_steps=None`` the relative residual tolerance the solvers stop at; with a
            budget, the Ritz residual in units of ``mu`` (``ritz_residual``) up to which a sample counts
            as converged (``1e-2``: the accuracy the score needs).
        trace_probes: Rademacher probes for the trace (matrix-free path only).
        trace_estimator: ``"hutchinson"`` (plain probes) or ``"deflated"`` (exact on the Lanczos space,
            projected probes on its complement; needs ``solver="lanczos"`` or ``"auto"`` and a budget).
        asymmetry_probes: probes for the ``||J - J^T||_F / ||J||_F`` estimate (matrix-free path; 2
            products each); 0 turns it off (NaN).
        min_eigenvalue: also report the most negative eigenvalue (free with a Lanczos budget and when dense).
        jvp: how ``J v`` is computed: ``"double_backward"`` or ``"forward"`` (``torch.func.jvp``).
        score_statistic: which statistic becomes the memorization score in ``[0, 1]``:
            ``"mean_mu"``: ``clamp(1 - mean_i mu_i, 0, 1)`` over the ``k`` flattest directions (a direction
            with ``mu > 1``, where the density curves upward as between two modes, offsets sharp ones);
            ``"top_mu"``: ``1 - mean_i clamp(mu_i, 0, 1)`` (each ``mu`` clamped first);
            ``"effective_dim"``: ``1 - clamp(d_eff / d, 0, 1)``;
            ``"flat_fraction"``: ``1 - flat_count / k``.
        flag_threshold: a sample is flagged as memorized when its score exceeds this, where neither the copy flag
            (training data at setup) nor a score null (``ProbeConfig.null_images > 0``) applies, and at the
            measurement timesteps after the primary one: a level that does not carry over from one data set to
            another (docs/transfer/results.md).
        flag_fpr: the per-sample flag's false-positive rate where it is calibrated: the copy flag
            (:mod:`~memcallback.measure.copy_flag`, the default with training data) flags a copy (distance ratio
            below 1/3) whose ratio is also below the held-out images' conformal quantile at this rate, when
            held-out data are given; the opt-in score null (:mod:`~memcallback.measure.null`) flags a score above
            the noised held-out images' quantile. 0.01: at most one sample in a hundred that is as novel as
            held-out data is flagged.
        chunk_size: most vectors sent through the network at once (``None``: all).
    """

    k: int = 4
    solver: str = "auto"
    krylov_steps: int | None = 26
    krylov_product: str = "S"
    lanczos_iters: int | None = None
    tol: float = 1e-2
    trace_probes: int = 8
    trace_estimator: str = "hutchinson"
    asymmetry_probes: int = 0
    min_eigenvalue: bool = True
    jvp: str = "double_backward"
    score_statistic: str = "mean_mu"
    flag_threshold: float = 0.25
    flag_fpr: float = 0.01
    chunk_size: int | None = None

    def __post_init__(self) -> None:
        require(is_int(self.k) and self.k >= 1, "k", self.k, "an int >= 1")
        require(isinstance(self.solver, str) and self.solver in SOLVERS, "solver", self.solver, f"one of {SOLVERS}")
        require(self.krylov_steps is None or (is_int(self.krylov_steps) and self.krylov_steps > self.k),
                "krylov_steps", self.krylov_steps, f"None (run to tol) or an int larger than k={self.k} (e.g. 2k + 10)")
        require(self.lanczos_iters is None or (is_int(self.lanczos_iters) and self.lanczos_iters > self.k),
                "lanczos_iters", self.lanczos_iters, "None or an int larger than k")
        require(is_real(self.tol) and 0 < self.tol < 1, "tol", self.tol, "a float in (0, 1)")
        require(is_int(self.trace_probes) and self.trace_probes >= 2, "trace_probes", self.trace_probes,
                "an int >= 2")
        require(isinstance(self.trace_estimator, str) and self.trace_estimator in TRACE_ESTIMATORS,
                "trace_estimator", self.trace_estimator, f"one of {TRACE_ESTIMATORS}")
        require(self.trace_estimator != "deflated" or (self.solver != "power" and self.krylov_steps is not None),
                "trace_estimator", self.trace_estimator,
                "'hutchinson' unless the spectrum comes from a Lanczos budget (solver lanczos/auto, krylov_steps set)")
        require(isinstance(self.krylov_product, str) and self.krylov_product in KRYLOV_PRODUCTS,
                "krylov_product", self.krylov_product, f"one of {KRYLOV_PRODUCTS}")
        require(self.krylov_product == "S" or (self.solver != "power" and self.krylov_steps is not None
                                               and self.trace_estimator == "hutchinson"),
                "krylov_product", self.krylov_product,
                "'S' unless solver is lanczos/auto with a krylov_steps budget and the hutchinson trace")
        require(is_int(self.asymmetry_probes) and self.asymmetry_probes >= 0, "asymmetry_probes",
                self.asymmetry_probes, "an int >= 0 (0: off)")
        require(isinstance(self.min_eigenvalue, bool), "min_eigenvalue", self.min_eigenvalue, "True or False")
        require(isinstance(self.jvp, str) and self.jvp in JVP_MODES, "jvp", self.jvp, f"one of {JVP_MODES}")
        require(isinstance(self.score_statistic, str) and self.score_statistic in SCORE_STATISTICS,
                "score_statistic", self.score_statistic, f"one of {SCORE_STATISTICS}")
        require(is_real(self.flag_threshold) and 0 <= self.flag_threshold <= 1,
                "flag_threshold", self.flag_threshold, "a float in [0, 1]")
        require(is_real(self.flag_fpr) and 0 < self.flag_fpr < 1, "flag_fpr", self.flag_fpr,
                "a false-positive rate in (0, 1), e.g. 0.01")
        require(self.chunk_size is None or (is_int(self.chunk_size) and self.chunk_size >= 1),
                "chunk_size", self.chunk_size, "None or an int >= 1")

    def use_dense(self, dim: int) -> bool:
        """Whether the exact dense path is used for data of dimension ``dim``."""
        return self.solver == "dense" or (self.solver == "auto" and dim <= DENSE_MAX_DIM)

    def products_per_sample(self, dim: int) -> int | None:
        """The Jacobian products one sample costs at one noise level (the unit of the class docstring, as
        ``SharpnessStats.num_matvecs`` counts them): ``dim`` on the dense path (one row of the Jacobian each), else
        ``1 + 2 n + trace_probes + 2 asymmetry_probes`` with ``n = min(krylov_steps, dim)`` Lanczos steps (``n + k + 1``
        for the spectrum with ``krylov_product="JT"``); ``None`` for the power solver and a solver run to ``tol``
        (``krylov_steps=None``), whose counts are not written down here."""
        if self.use_dense(dim):
            return dim
        if self.krylov_steps is None or self.solver == "power":
            return None
        steps = min(self.krylov_steps, dim)
        spectrum = 2 * steps if self.krylov_product == "S" else steps + self.k + 1
        return 1 + spectrum + self.trace_probes + 2 * self.asymmetry_probes


@dataclass
class SharpnessStats:
    """Per-sample sharpness at one noise level; every tensor field has a leading batch dimension ``B``.

    Attributes:
        timestep: the diffusion timestep ``t`` of the measurement.
        sigma: the noise level ``sigma_t``.
        eigenvalues: ``[B, k]`` largest eigenvalues of S, descending (the flattest directions).
        mu: ``[B, k]`` their normalized form ``1 + sigma^2 lambda``.
        min_mu: ``[B]`` normalized most negative eigenvalue (the sharpest direction); NaN if not solved. On
            the Lanczos budget path it is the smallest Ritz value of the same run as ``mu``, an estimate
            with residual ``min_mu_residual``.
        min_mu_residual: ``[B]`` ``sigma^2 ||S u - theta u||`` of that pair (0 when dense, NaN if not solved).
        trace_mu: ``[B]`` ``sigma^2 tr(S)`` (exact on the dense path, estimated otherwise).
        effective_dim: ``[B]`` ``d + sigma^2 tr(S)``, a local intrinsic dimension estimate (~0 when memorized).
        flat_count: ``[B]`` number of directions with ``mu > 0.5`` (among all d when dense, else among k).
        eps_norm_sq: ``[B]`` ``sigma^2 ||s||^2 = ||eps_hat||^2`` (paper, Lemma 4.1: ``E||s||^2 = -tr H``).
        hs_norm: ``[B]`` ``sigma^3 ||J s||`` (paper, Lemma 4.3), normalized like ``mu``.
        asymmetry: ``[B]`` ``||J - J^T||_F / ||J||_F`` (exact when dense, estimated otherwise; NaN when off).
        converged: ``[B]`` whether every requested eigenvalue met the tolerance.
        ritz_residual: ``[B]`` ``sigma^2 max_i ||S u_i - theta_i u_i||`` over the top-k Ritz pairs: the
            residual in units of ``mu``, a bound on the distance of each ``mu_i`` to the spectrum (0 when dense).
        memorization_score: ``[B]`` memorization score in ``[0, 1]``.
        flagged: ``[B]`` ``memorization_score > flag_threshold``.
        eigenvectors: ``[B, k, *shape]`` for warm-starting the next measurement (matrix-free path).
        num_matvecs: Jacobian products per sample spent on this measurement (one ``J v`` or ``J^T v`` is
            1, a symmetric product 2; dense: ``d``, one reverse pass per Jacobian row).
        products: the same by part, in the order they run: ``hs_norm``, ``spectrum``, ``min_eigenvalue``
            (0 when it comes from the spectrum's run), ``trace``, ``asymmetry`` (``dense`` on the dense
            path); a part the measurement did not reach is absent.
        partial: an interrupt stopped the measurement: parts not reached are NaN (a cut Lanczos run
            still gives Ritz values once it has taken ``k`` steps).
    """

    timestep: int
    sigma: float
    eigenvalues: Tensor
    mu: Tensor
    min_mu: Tensor
    min_mu_residual: Tensor
    trace_mu: Tensor
    effective_dim: Tensor
    flat_count: Tensor
    eps_norm_sq: Tensor
    hs_norm: Tensor
    asymmetry: Tensor
    converged: Tensor
    ritz_residual: Tensor
    memorization_score: Tensor
    flagged: Tensor
    eigenvectors: Tensor | None = None
    num_matvecs: int = 0
    products: dict[str, int] = field(default_factory=dict)
    partial: bool = False

    #: per-sample scalar statistics by metric name (``score`` is ``memorization_score``), in display order.
    SCALARS = names.SHARPNESS

    def scalars(self) -> dict[str, Tensor]:
        """``{name: [B] float tensor}`` for every per-sample scalar statistic (``score``: the memorization
        score, ``mu_max``: largest mu, ``mu_topk``: mean of the k largest)."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values["score"] = self.memorization_score
        values["mu_max"] = self.mu[:, 0]
        values["mu_topk"] = self.mu.mean(dim=1)
        return {name: values[name].float() for name in self.SCALARS}


def memorization_score(mu: Tensor, effective_dim: Tensor, flat_count: Tensor, dim: int, statistic: str) -> Tensor:
    """Map sharpness statistics to a per-sample memorization score in ``[0, 1]`` (1 = fully sharp).

    ``mean_mu``: ``clamp(1 - mean_i mu_i, 0, 1)``; ``top_mu``: ``1 - mean_i clamp(mu_i, 0, 1)``;
    ``effective_dim``: ``1 - clamp(d_eff / d, 0, 1)``; ``flat_fraction``: ``1 - flat_count / k``.
    """
    if statistic == "mean_mu":
        return (1.0 - mu.mean(dim=1)).clamp(0.0, 1.0)
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
    interrupt: Callable[[], bool] | None = None,
) -> SharpnessStats:
    """Measure the sharpness statistics of ``score_fn`` at the states ``x``.

    With a Krylov budget (the default) the number and order of network calls depend only on the
    config and the batch, never on the data or on convergence.

    Args:
        score_fn: per-sample score ``x [B, *shape] -> s(x, t) [B, *shape]`` at a fixed timestep.
        x: ``[B, *shape]`` states (typically the sampler's own trajectory states ``x_t``).
        timestep: the timestep ``t`` (recorded in the result).
        sigma: ``sigma_t``, the noise level that normalizes the spectrum.
        config: solver and score settings.
        v0: optional warm start ``[B, j, *shape]`` for the Krylov solve (the previous measurement's
            eigenvectors at the same probes and timestep).
        generator: source of all randomness (Krylov start, trace and asymmetry probes).
        interrupt: called between units of work on the matrix-free path (before ``||J s||``, after every
            Krylov step or block iteration, before the trace and the asymmetry); once it returns True the
            rest is skipped and the result has ``partial=True``. An :class:`Interrupt` is used as it is.

    Returns:
        :class:`SharpnessStats` with one row per sample.
    """
    dim = x[0].numel()
    if config.k > dim:
        raise ValueError(f"k={config.k} is larger than the data dimension {dim}; choose k <= {dim}.")
    stop = interrupt if isinstance(interrupt, Interrupt) else Interrupt(interrupt)
    if x.dtype in (torch.float16, torch.bfloat16):  # the network runs in its own precision, linear algebra in fp32
        model_dtype, score_fn_lowp = x.dtype, score_fn
        score_fn = lambda z: score_fn_lowp(z.to(model_dtype)).float()  # noqa: E731
        x = x.float()
        v0 = None if v0 is None else v0.float()
    s2 = sigma**2
    if config.use_dense(dim):
        with torch.no_grad():
            s = score_fn(x.detach()).detach()
        m = _dense(score_fn, x, s, s2)
    else:
        op = jacobian_operator(score_fn, x, symmetrize=True, chunk_size=config.chunk_size, jvp=config.jvp)
        s = op.output
        m = measure_matrix_free(op, s, s2, config, v0, generator, stop)
    top = m.eigenvalues[:, : config.k]
    mu = 1.0 + s2 * top
    effective_dim = dim + m.trace_mu
    score = memorization_score(mu, effective_dim, m.flat_count, dim, config.score_statistic)
    return SharpnessStats(
        timestep=int(timestep), sigma=float(sigma), eigenvalues=top, mu=mu, min_mu=m.min_mu,
        min_mu_residual=m.min_mu_residual, trace_mu=m.trace_mu, effective_dim=effective_dim, flat_count=m.flat_count,
        eps_norm_sq=s2 * s.flatten(1).square().sum(dim=1), hs_norm=sigma**3 * m.hs_norm, asymmetry=m.asymmetry,
        converged=m.converged, ritz_residual=m.ritz_residual, memorization_score=score,
        flagged=score > config.flag_threshold, eigenvectors=m.eigenvectors, num_matvecs=sum(m.products.values()),
        products=m.products, partial=stop.fired,
    )


def _dense(score_fn: Callable[[Tensor], Tensor], x: Tensor, s: Tensor, s2: float) -> Measured:
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
    B = x.shape[0]
    converged = torch.ones(B, dtype=torch.bool, device=x.device)
    zero = torch.zeros(B, dtype=evals.dtype, device=x.device)
    return Measured(evals, mu_all[:, -1], zero, trace_mu, flat, hs_norm, asym, converged, zero, None,
                     {"dense": J.shape[1]})
