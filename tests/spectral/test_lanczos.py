"""Lanczos against exact spectra."""

from __future__ import annotations

import pytest
import torch

from memcallback.spectral import BatchedOperator, MatrixOperator, jacobian_operator, lanczos


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("which", ["LA", "SA", "LM"])
def test_top5_matches_exact_on_every_operator(case, which, extremes, norm):
    _, fn, x, S = case
    res = lanczos(jacobian_operator(fn, x), 5, which, generator=gen(), return_eigenvectors=True)
    exact = extremes(S, 5, which)
    scale = norm(S)[:, None]
    assert ((res.eigenvalues - exact).abs() <= 1e-3 * scale).all()
    assert res.converged.all()
    assert res.which == which and res.num_matvecs <= 100
    # Ritz vectors: unit norm, and the reported residuals are the true ones.
    u = res.eigenvectors.reshape(x.shape[0], 5, -1)
    torch.testing.assert_close(u.norm(dim=-1), torch.ones(x.shape[0], 5, dtype=x.dtype))
    true_res = (u @ S.mT - res.eigenvalues[..., None] * u).norm(dim=-1)
    assert (true_res <= 1e-6 * scale + 2 * res.residuals).all()


def test_sorting_convention():
    A = torch.diag(torch.tensor([3.0, -5.0, 1.0, -0.5, 2.0], dtype=torch.float64))[None]
    op = MatrixOperator(A)
    assert lanczos(op, 3, "LA", generator=gen()).eigenvalues[0].tolist() == pytest.approx([3.0, 2.0, 1.0])
    assert lanczos(op, 3, "SA", generator=gen()).eigenvalues[0].tolist() == pytest.approx([-5.0, -0.5, 1.0])
    assert lanczos(op, 3, "LM", generator=gen()).eigenvalues[0].tolist() == pytest.approx([-5.0, 3.0, 2.0])


def test_warm_start_needs_fewer_steps(case):
    # As between two checks: the previous eigenvectors, slightly off for the current operator.
    _, fn, x, _ = case
    op = jacobian_operator(fn, x)
    cold = lanczos(op, 5, "LA", generator=gen(), return_eigenvectors=True)
    near = cold.eigenvectors + 1e-4 * torch.randn(cold.eigenvectors.shape, generator=gen(9), dtype=x.dtype)
    warm = lanczos(op, 5, "LA", v0=near, generator=gen(1))
    assert warm.num_matvecs < cold.num_matvecs
    torch.testing.assert_close(warm.eigenvalues, cold.eigenvalues, atol=1e-6, rtol=0)
    single_cold = lanczos(op, 1, "LA", generator=gen(1))
    single = lanczos(op, 1, "LA", v0=near[:, 0], generator=gen(1))
    assert single.num_matvecs < single_cold.num_matvecs


def test_exact_warm_start_breaks_down_and_confirms():
    evals = torch.linspace(-1.0, 1.0, 20, dtype=torch.float64)
    Q = torch.linalg.qr(torch.randn(20, 20, generator=gen(2), dtype=torch.float64)).Q
    op = MatrixOperator((Q @ torch.diag(evals) @ Q.T)[None])
    res = lanczos(op, 3, "LA", v0=Q.T[None, -3:], generator=gen())
    torch.testing.assert_close(res.eigenvalues, evals.flip(0)[None, :3])
    assert res.converged.all() and 3 < res.num_matvecs < 20


def test_breakdown_restarts_in_an_invariant_subspace():
    # Three distinct eigenvalues: the Krylov space of any start vector has dimension 3 < k = 5.
    evals = torch.tensor([2.0] * 10 + [1.0] * 10 + [-1.0] * 12, dtype=torch.float64)
    Q = torch.linalg.qr(torch.randn(32, 32, generator=gen(3), dtype=torch.float64)).Q
    op = MatrixOperator((Q @ torch.diag(evals) @ Q.T)[None].repeat(2, 1, 1))
    res = lanczos(op, 5, "LA", generator=gen())
    torch.testing.assert_close(res.eigenvalues, torch.tensor([[2.0] * 5] * 2, dtype=torch.float64))
    assert res.converged.all()


def test_k_equals_d_gives_the_whole_spectrum(extremes):
    A = torch.randn(2, 6, 6, generator=gen(4), dtype=torch.float64)
    A = A + A.mT
    res = lanczos(MatrixOperator(A), 6, "SA", generator=gen())
    torch.testing.assert_close(res.eigenvalues, extremes(A, 6, "SA"))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_float32_and_float64(dtype, extremes, norm):
    from spectral_cases import mlp_case

    fn64, x, S = mlp_case()
    net_dtype_fn = (lambda z: fn64(z.double()).to(dtype)) if dtype == torch.float32 else fn64
    res = lanczos(jacobian_operator(net_dtype_fn, x.to(dtype)), 5, "LA", generator=gen())
    assert res.eigenvalues.dtype == dtype and res.residuals.dtype == dtype
    assert ((res.eigenvalues.double() - extremes(S, 5, "LA")).abs() <= 1e-3 * norm(S)[:, None]).all()


def test_cpu_determinism(case):
    _, fn, x, _ = case
    a = lanczos(jacobian_operator(fn, x), 5, "LA", generator=gen(7), return_eigenvectors=True)
    b = lanczos(jacobian_operator(fn, x), 5, "LA", generator=gen(7), return_eigenvectors=True)
    assert torch.equal(a.eigenvalues, b.eigenvalues) and torch.equal(a.eigenvectors, b.eigenvectors)
    assert a.num_matvecs == b.num_matvecs


def test_num_iters_cap_reports_unconverged():
    from spectral_cases import gaussian_case

    fn, x, _ = gaussian_case()
    op = jacobian_operator(fn, x)
    res = lanczos(op, 5, "SA", num_iters=6, tol=1e-12, generator=gen())
    assert res.num_matvecs == 6 and not res.converged.all()
    assert op.num_matvecs == 6


class _NaNOperator(BatchedOperator):
    def __init__(self):
        super().__init__(3, (4,), torch.float64, "cpu")

    def _apply(self, V):
        out = V.clone()
        out[1] = float("nan")
        return out


def test_bad_inputs_raise_clear_errors():
    op = MatrixOperator(torch.eye(4, dtype=torch.float64).expand(2, 4, 4))
    with pytest.raises(ValueError, match="which must be one of"):
        lanczos(op, 2, "BE")
    with pytest.raises(ValueError, match=r"k must be an int with 1 <= k <= dim = 4"):
        lanczos(op, 5)
    with pytest.raises(ValueError, match="k must be"):
        lanczos(op, 0)
    with pytest.raises(ValueError, match="num_iters must be >= k"):
        lanczos(op, 3, num_iters=2)
    with pytest.raises(ValueError, match=r"v0 must have shape \[B, \*shape\]"):
        lanczos(op, 2, v0=torch.ones(3, 4))
    with pytest.raises(ValueError, match="v0 is zero"):
        lanczos(op, 2, v0=torch.zeros(2, 4))
    with pytest.raises(ValueError, match="v0 contains NaN"):
        lanczos(op, 2, v0=torch.full((2, 4), float("nan")))
    with pytest.raises(TypeError, match="BatchedOperator"):
        lanczos(lambda v: v, 2)
    with pytest.raises(FloatingPointError, match=r"sample\(s\) \[1\]"):
        lanczos(_NaNOperator(), 2, generator=gen())
