"""Hutchinson trace and stochastic Lanczos quadrature."""

from __future__ import annotations

import pytest
import torch

from memcallback.spectral import MatrixOperator, hutchinson_trace, jacobian_operator, slq_density


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_hutchinson_matches_exact_trace_within_stderr(case):
    _, fn, x, S = case
    res = hutchinson_trace(jacobian_operator(fn, x), num_probes=64, generator=gen())
    exact = S.diagonal(dim1=-2, dim2=-1).sum(-1)
    assert res.num_matvecs == 64 and (res.stderr > 0).all()
    assert ((res.estimate - exact).abs() <= 5 * res.stderr).all()


def test_hutchinson_is_exact_on_diagonal_operators_and_deterministic():
    A = torch.diag_embed(torch.randn(2, 10, generator=gen(1), dtype=torch.float64))
    res = hutchinson_trace(MatrixOperator(A), num_probes=3, generator=gen())
    torch.testing.assert_close(res.estimate, A.diagonal(dim1=-2, dim2=-1).sum(-1))
    torch.testing.assert_close(res.stderr, torch.zeros(2, dtype=torch.float64))
    one = hutchinson_trace(MatrixOperator(A), num_probes=1, generator=gen())
    assert torch.isinf(one.stderr).all()
    again = hutchinson_trace(MatrixOperator(A + 1e-3 * torch.randn(2, 10, 10, generator=gen(2)).double()), 4, gen(3))
    same = hutchinson_trace(MatrixOperator(A + 1e-3 * torch.randn(2, 10, 10, generator=gen(2)).double()), 4, gen(3))
    assert torch.equal(again.estimate, same.estimate)


def test_slq_weights_and_mean(case):
    _, fn, x, S = case
    d = x.shape[1]
    dens = slq_density(jacobian_operator(fn, x), num_probes=8, num_iters=20, generator=gen())
    assert dens.nodes.shape == dens.weights.shape == (x.shape[0], 8 * 20)
    torch.testing.assert_close(dens.weights.sum(1), torch.ones(x.shape[0], dtype=x.dtype))
    assert (dens.weights >= 0).all()
    # The SLQ mean is exactly the Hutchinson estimate / d with the same probes.
    hut = hutchinson_trace(jacobian_operator(fn, x), num_probes=8, generator=gen())
    torch.testing.assert_close((dens.weights * dens.nodes).sum(1) * d, hut.estimate)
    # Nodes lie inside the spectrum.
    ev = torch.linalg.eigvalsh(S)
    assert (dens.nodes >= ev[:, :1] - 1e-8).all() and (dens.nodes <= ev[:, -1:] + 1e-8).all()


def test_slq_with_full_krylov_space_is_exact_quadrature():
    evals = torch.tensor([-1.0, -1.0, 0.0, 0.5, 2.0, 2.0], dtype=torch.float64)
    dens = slq_density(MatrixOperator(torch.diag(evals)[None]), num_probes=2, num_iters=50, generator=gen())
    assert dens.num_matvecs == 6
    # Rademacher probes weigh every eigenvector equally: the density is exact.
    mass, edges = dens.histogram(bins=4, range=(-1.5, 2.5))
    torch.testing.assert_close(mass, torch.tensor([[2 / 6, 1 / 6, 1 / 6, 2 / 6]], dtype=torch.float64))
    assert edges.shape == (5,)


def test_histogram_defaults_and_errors():
    A = torch.randn(3, 12, 12, generator=gen(4), dtype=torch.float64)
    dens = slq_density(MatrixOperator(A + A.mT), num_probes=2, num_iters=5, generator=gen())
    mass, _ = dens.histogram(bins=7)
    torch.testing.assert_close(mass.sum(1), torch.ones(3, dtype=torch.float64))
    with pytest.raises(ValueError, match="bins must be >= 1"):
        dens.histogram(bins=0)
    with pytest.raises(ValueError, match="num_probes must be an int >= 1"):
        hutchinson_trace(MatrixOperator(A), num_probes=0)
    with pytest.raises(ValueError, match="num_iters must be an int >= 1"):
        slq_density(MatrixOperator(A), num_iters=0)
