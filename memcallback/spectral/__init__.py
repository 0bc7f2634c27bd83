"""Matrix-free spectra of per-sample Jacobians (pure torch; no Lightning, no diffusion).

Operators (:class:`BatchedOperator`) act on ``[B, m, *shape]``: ``m`` vectors for each of ``B``
independent samples, one batched evaluation per call. Solvers return dataclasses with per-sample
results: :func:`lanczos` and :func:`power_iteration` (extreme eigenpairs to a tolerance),
:func:`krylov_run` (a fixed number of Lanczos steps: both ends of the spectrum from one run),
:func:`hutchinson_trace` and :func:`deflated_trace` (trace), :func:`slq_density` (spectral density), and
the dense reference :func:`dense_spectrum`.
"""

from memcallback.spectral.dense import dense_jacobian, dense_spectrum
from memcallback.spectral.jacobian import JVP_MODES, JacobianOperator, jacobian_operator
from memcallback.spectral.krylov import KrylovRun, deflated_trace, krylov_run, transpose_krylov
from memcallback.spectral.lanczos import lanczos
from memcallback.spectral.operators import BatchedOperator, MatrixOperator
from memcallback.spectral.power import power_iteration
from memcallback.spectral.results import SpectralDensity, SpectrumResult, TraceResult
from memcallback.spectral.trace import hutchinson_trace, slq_density

__all__ = [
    "JVP_MODES",
    "BatchedOperator",
    "JacobianOperator",
    "KrylovRun",
    "MatrixOperator",
    "SpectralDensity",
    "SpectrumResult",
    "TraceResult",
    "deflated_trace",
    "dense_jacobian",
    "dense_spectrum",
    "hutchinson_trace",
    "jacobian_operator",
    "krylov_run",
    "lanczos",
    "power_iteration",
    "slq_density",
    "transpose_krylov",
]
