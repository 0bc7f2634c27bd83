"""Result containers returned by the spectral solvers."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class SpectrumResult:
    """Eigenpairs of a batched symmetric operator, one row per sample.

    Attributes:
        eigenvalues: ``[B, k]``. Sorted descending for ``which="LA"``, by descending magnitude for
            ``"LM"``, ascending for ``"SA"`` (so column 0 is always the most extreme one asked for).
        eigenvectors: ``[B, k, *shape]`` unit vectors (per sample), or ``None`` when not requested.
        residuals: ``[B, k]`` absolute residual norms ``||A u_i - lambda_i u_i||`` (for Lanczos the
            Ritz estimate ``|beta_m s_{m,i}|``; exact up to rounding with full reorthogonalization).
        num_matvecs: operator products used **per sample** (one product = one vector of one sample).
        converged: ``[B, k]`` bool, ``residuals <= tol * ||A||_est``.
        which: the part of the spectrum that was asked for (``"LA"``, ``"SA"`` or ``"LM"``).
    """

    eigenvalues: torch.Tensor
    eigenvectors: torch.Tensor | None
    residuals: torch.Tensor
    num_matvecs: int
    converged: torch.Tensor
    which: str


@dataclass
class TraceResult:
    """A stochastic trace estimate per sample.

    Attributes:
        estimate: ``[B]`` mean of the probe quadratic forms ``z^T A z``.
        stderr: ``[B]`` standard error of that mean, ``std(z^T A z) / sqrt(num_probes)``.
        num_matvecs: operator products used per sample (= number of probes).
    """

    estimate: torch.Tensor
    stderr: torch.Tensor
    num_matvecs: int


@dataclass
class SpectralDensity:
    """A discrete spectral density per sample from stochastic Lanczos quadrature.

    The density of sample ``b`` is ``sum_j weights[b, j] * delta(lambda - nodes[b, j])``; weights are
    non-negative and sum to 1 per sample, so ``d * sum_j weights[b, j] * f(nodes[b, j])`` estimates
    ``tr f(A_b)``.

    Attributes:
        nodes: ``[B, P*m]`` Ritz values (P probes times m Lanczos steps).
        weights: ``[B, P*m]`` squared first components of the Ritz vectors, divided by P.
        num_matvecs: operator products used per sample.
    """

    nodes: torch.Tensor
    weights: torch.Tensor
    num_matvecs: int

    def histogram(self, bins: int = 50, range: tuple[float, float] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Bins the density per sample.

        Args:
            bins: number of equal-width bins.
            range: ``(low, high)``; defaults to the min and max node over the whole batch. Nodes
                outside the range are dropped (their mass is lost), as in ``torch.histc``.

        Returns:
            ``(mass, edges)``: ``mass [B, bins]`` (sums to 1 per sample when every node is in range)
            and ``edges [bins + 1]``.
        """
        if bins < 1:
            raise ValueError(f"bins must be >= 1, got {bins}.")
        nodes = self.nodes.detach().double().cpu()
        weights = self.weights.detach().double().cpu()
        if range is None:
            low, high = nodes.min().item(), nodes.max().item()
        else:
            low, high = float(range[0]), float(range[1])
        if not high > low:
            high = low + 1.0
        edges = torch.linspace(low, high, bins + 1, dtype=torch.float64)
        index = torch.bucketize(nodes, edges, right=True) - 1
        index = torch.where(nodes == high, bins - 1, index)
        inside = (index >= 0) & (index < bins)
        mass = torch.zeros(nodes.shape[0], bins, dtype=torch.float64)
        mass.scatter_add_(1, index.clamp(0, bins - 1), torch.where(inside, weights, 0.0))
        return mass, edges
