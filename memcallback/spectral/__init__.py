"""Matrix-free spectra of per-sample Jacobians (pure torch; no Lightning, no diffusion).

Operators (:class:`BatchedOperator`) act on ``[B, m, *shape]``: ``m`` vectors for each of ``B``
independent samples, one batched evaluation per call. Solvers return dataclasses with per-sample
results: :func:`lanczos` and :func:`power_iteration` (extreme eigenpairs), :func:`hutchinson_trace`
(trace), :func:`slq_density` (spectral density), and the dense reference :func:`dense_spectrum`.
"""

from memcallback.spectral.dense import dense_jacobian, dense_spectrum
from memcallback.spectral.jacobian import JacobianOperator, jacobian_operator
from memcallback.spectral.lanczos import lanczos
from memcallback.spectral.operators import BatchedOperator, MatrixOperator
from memcallback.spectral.power import power_iteration
from memcallback.spectral.results import SpectralDensity, SpectrumResult, TraceResult
from memcallback.spectral.trace import hutchinson_trace, slq_density

__all__ = [
    "BatchedOperator",
    "JacobianOperator",
    "MatrixOperator",
    "SpectralDensity",
    "SpectrumResult",
    "TraceResult",
    "dense_jacobian",
    "dense_spectrum",
    "hutchinson_trace",
    "jacobian_operator",
    "lanczos",
    "power_iteration",
    "slq_density",
]
