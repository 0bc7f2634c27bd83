"""Shifted subspace iteration against exact spectra."""

from __future__ import annotations

import pytest
import torch

from memcallback.spectral import MatrixOperator, jacobian_operator, lanczos, power_iteration


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("which", ["LA", "SA", "LM"])
def test_top5_matches_exact_on_every_operator(case, which, extremes, norm):
    _, fn, x, S = case
    res = power_iteration(jacobian_operator(fn, x), 5, which, generator=gen(), return_eigenvectors=True)
    scale = norm(S)[:, None]
    assert res.converged.all()
    assert ((res.eigenvalues - extremes(S, 5, which)).abs() <= 1e-3 * scale).all()
    u = res.eigenvectors.reshape(x.shape[0], 5, -1)
    true_res = (u @ S.mT - res.eigenvalues[..., None] * u).norm(dim=-1)
    torch.testing.assert_close(true_res, res.residuals, atol=1e-8, rtol=1e-6)


def test_lanczos_needs_far_fewer_products_than_power_iteration(case):
    _, fn, x, _ = case
    op = jacobian_operator(fn, x)
    lz = lanczos(op, 5, "LA", generator=gen())
    pw = power_iteration(op, 5, "LA", generator=gen())
    assert 3 * lz.num_matvecs < pw.num_matvecs


def test_explicit_shift_and_matvec_count():
    A = torch.diag(torch.tensor([1.0, 0.5, 0.0, -2.0, -4.0, -4.1], dtype=torch.float64))[None]
    op = MatrixOperator(A)
    res = power_iteration(op, 2, "LA", shift=4.5, generator=gen(), block_size=3, tol=1e-8)
    torch.testing.assert_close(res.eigenvalues, torch.tensor([[1.0, 0.5]], dtype=torch.float64))
    assert res.num_matvecs == op.num_matvecs and res.num_matvecs % 3 == 0
    # Without a shift, "LA" on an operator dominated by its negative end still finds the top.
    auto = power_iteration(MatrixOperator(A), 2, "LA", generator=gen(), tol=1e-8)
    torch.testing.assert_close(auto.eigenvalues, res.eigenvalues)


def test_warm_start_and_determinism():
    from spectral_cases import mixture_case

    fn, x, _ = mixture_case()
    op = jacobian_operator(fn, x)
    a = power_iteration(op, 3, "LA", generator=gen(5), return_eigenvectors=True)
    b = power_iteration(op, 3, "LA", generator=gen(5), return_eigenvectors=True)
    assert torch.equal(a.eigenvalues, b.eigenvalues) and torch.equal(a.eigenvectors, b.eigenvectors)
    warm = power_iteration(op, 3, "LA", v0=a.eigenvectors, shift=torch.tensor(20.0), generator=gen(6))
    assert warm.num_matvecs < a.num_matvecs
    torch.testing.assert_close(warm.eigenvalues, a.eigenvalues, atol=1e-5, rtol=0)


def test_bad_inputs_raise_clear_errors():
    op = MatrixOperator(torch.eye(4, dtype=torch.float64).expand(2, 4, 4))
    with pytest.raises(ValueError, match="which must be one of"):
        power_iteration(op, 2, "largest")
    with pytest.raises(ValueError, match="k must be an int with 1 <= k <= dim = 4"):
        power_iteration(op, 7)
    with pytest.raises(ValueError, match="block_size must be an int with k = 3"):
        power_iteration(op, 3, block_size=2)
    with pytest.raises(ValueError, match="max_iters must be an int >= 1"):
        power_iteration(op, 1, max_iters=0)
    with pytest.raises(ValueError, match="shift must be finite"):
        power_iteration(op, 1, shift=float("inf"))
    with pytest.raises(ValueError, match="at most block_size"):
        power_iteration(op, 1, v0=torch.ones(2, 3, 4), block_size=2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_float32_and_float64(dtype, extremes, norm):
    from spectral_cases import mlp_case

    fn64, x, S = mlp_case()
    fn = (lambda z: fn64(z.double()).to(dtype)) if dtype == torch.float32 else fn64
    res = power_iteration(jacobian_operator(fn, x.to(dtype)), 5, "LA", generator=gen())
    assert res.eigenvalues.dtype == dtype and res.converged.all()
    assert ((res.eigenvalues.double() - extremes(S, 5, "LA")).abs() <= 1e-3 * norm(S)[:, None]).all()
