"""Fixed-budget Lanczos (krylov_run): both ends from one run, exact residuals, fixed cost, interrupt, deflated trace."""

from __future__ import annotations

import pytest
import torch
from spectral_cases import gaussian_case, mlp_case

from memcallback.spectral import (
    MatrixOperator,
    deflated_trace,
    hutchinson_trace,
    jacobian_operator,
    krylov_run,
    transpose_krylov,
)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_both_ends_with_true_residuals(case, extremes):
    """Ritz values of one run at both ends, each within its residual of the spectrum; residuals are exact."""
    _, fn, x, S = case
    op = jacobian_operator(fn, x)
    run = krylov_run(op, 30, generator=gen())
    assert run.num_matvecs == 30 and op.num_matvecs == 30 and op.num_jacobian_products == 60
    top = run.ritz(4, "LA", return_eigenvectors=True)
    low = run.ritz(1, "SA", return_eigenvectors=True)
    exact = torch.linalg.eigvalsh(S)
    for res in (top, low):
        u = res.eigenvectors.flatten(2)
        true_res = torch.linalg.vector_norm(u @ S.mT - res.eigenvalues[..., None] * u, dim=-1)
        torch.testing.assert_close(res.residuals, true_res, atol=1e-8, rtol=1e-6)
        gap = (res.eigenvalues[..., None] - exact[:, None, :]).abs().amin(-1)
        assert (gap <= res.residuals + 1e-10).all()  # a Ritz value lies within its residual of an eigenvalue
    # the most negative eigenvalue converges fast from the same run (it is well separated in every case)
    torch.testing.assert_close(low.eigenvalues, extremes(S, 1, "SA"), atol=1e-4, rtol=1e-4)


def test_full_run_is_exact(case, extremes):
    _, fn, x, S = case
    run = krylov_run(jacobian_operator(fn, x), x.shape[1], generator=gen())
    torch.testing.assert_close(run.ritz(5, "LA").eigenvalues, extremes(S, 5, "LA"), atol=1e-8, rtol=1e-8)
    torch.testing.assert_close(run.ritz(3, "SA").eigenvalues, extremes(S, 3, "SA"), atol=1e-8, rtol=1e-8)


def test_step_count_is_fixed_even_after_an_exact_warm_start():
    """A warm start that spans an invariant subspace breaks the recurrence down at once; the run still takes
    every step (restarting at no extra call), and the wanted values come out exact."""
    Q = torch.linalg.qr(torch.randn(20, 20, generator=gen(), dtype=torch.float64)).Q
    lam = torch.linspace(-3, 2, 20, dtype=torch.float64)
    A = (Q @ torch.diag(lam) @ Q.T).expand(2, 20, 20)
    op = MatrixOperator(A)
    run = krylov_run(op, 9, v0=Q[:, -1].expand(2, 20), generator=gen(1))
    assert run.num_matvecs == 9 and op.num_matvecs == 9
    torch.testing.assert_close(run.ritz(1, "LA").eigenvalues, lam[-1:].expand(2, 1))


def test_interrupt_stops_between_steps():
    calls = []

    def interrupt() -> bool:
        calls.append(1)
        return len(calls) >= 3

    A = torch.diag_embed(torch.arange(1.0, 13.0, dtype=torch.float64)).expand(2, 12, 12)
    op = MatrixOperator(A)
    run = krylov_run(op, 10, generator=gen(), interrupt=interrupt)
    assert run.num_matvecs == 3 and op.num_matvecs == 3 and len(calls) == 3
    cut = run.ritz(5, "LA", return_eigenvectors=True)
    assert torch.isfinite(cut.eigenvalues[:, :3]).all() and torch.isnan(cut.eigenvalues[:, 3:]).all()
    assert torch.isinf(cut.residuals[:, 3:]).all() and not cut.converged[:, 3:].any()
    assert cut.eigenvectors.shape == (2, 5, 12)


def test_deflated_trace_is_unbiased_and_exact_on_a_full_space(case):
    _, fn, x, S = case
    op = jacobian_operator(fn, x)
    exact = S.diagonal(dim1=-2, dim2=-1).sum(-1)
    full = krylov_run(op, x.shape[1], generator=gen())
    res = deflated_trace(op.view("JT"), full, num_probes=2, generator=gen(1))
    torch.testing.assert_close(res.estimate, exact, atol=1e-8, rtol=1e-8)  # nothing left to estimate
    run = krylov_run(op, 12, generator=gen())
    res = deflated_trace(op.view("JT"), run, num_probes=200, generator=gen(2))
    assert res.num_matvecs == 200
    assert ((res.estimate - exact).abs() <= 5 * res.stderr + 1e-9).all()


def test_deflation_removes_the_variance_of_outliers():
    """With a few large eigenvalues (which the Krylov space holds) the projected probes see only the bulk."""
    d = 60
    Q = torch.linalg.qr(torch.randn(d, d, generator=gen(3), dtype=torch.float64)).Q
    lam = torch.cat([torch.tensor([50.0, 40.0, -45.0]), 0.1 * torch.randn(d - 3, generator=gen(4)).double()])
    op = MatrixOperator((Q @ torch.diag(lam) @ Q.T).expand(2, d, d))
    run = krylov_run(op, 10, generator=gen())
    plain = hutchinson_trace(op, 64, gen(5))
    deflated = deflated_trace(op, run, 64, gen(5))
    assert (deflated.stderr < 0.1 * plain.stderr).all()
    assert ((deflated.estimate - lam.sum()).abs() <= 5 * deflated.stderr).all()


def test_transpose_krylov_has_exact_residuals_and_its_cost(case, extremes):
    """Ritz pairs of S on the Krylov space of J^T: exact residuals, each value within its residual of the
    spectrum, exact on the full space; num_steps J^T products plus one J product per wanted pair."""
    _, fn, x, S = case
    op = jacobian_operator(fn, x)
    top, low = transpose_krylov(op, 4, 20, generator=gen())
    assert op.num_jacobian_products == 20 + 4 + 1 and top.num_matvecs == 25
    exact = torch.linalg.eigvalsh(S)
    for res, vectors in ((top, top.eigenvectors), (low, None)):
        if vectors is not None:
            u = vectors.flatten(2)
            true_res = torch.linalg.vector_norm(u @ S.mT - res.eigenvalues[..., None] * u, dim=-1)
            torch.testing.assert_close(res.residuals, true_res, atol=1e-8, rtol=1e-6)
        gap = (res.eigenvalues[..., None] - exact[:, None, :]).abs().amin(-1)
        assert (gap <= res.residuals + 1e-10).all()
    top, low = transpose_krylov(jacobian_operator(fn, x), 4, x.shape[1], generator=gen())
    torch.testing.assert_close(top.eigenvalues, extremes(S, 4, "LA"), atol=1e-8, rtol=1e-8)
    torch.testing.assert_close(low.eigenvalues, extremes(S, 1, "SA"), atol=1e-8, rtol=1e-8)
    assert (top.residuals < 1e-8 * exact.abs().amax(-1, keepdim=True)).all()


def test_transpose_krylov_is_lanczos_for_a_symmetric_jacobian():
    fn, x, _ = gaussian_case()
    top, low = transpose_krylov(jacobian_operator(fn, x), 3, 12, generator=gen())
    run = krylov_run(jacobian_operator(fn, x), 12, generator=gen())
    torch.testing.assert_close(top.eigenvalues, run.ritz(3, "LA").eigenvalues)
    torch.testing.assert_close(low.eigenvalues, run.ritz(1, "SA").eigenvalues)
    torch.testing.assert_close(top.residuals, run.ritz(3, "LA").residuals, atol=1e-9, rtol=1e-6)


def test_transpose_krylov_interrupt_skips_the_residual_product():
    fn, x, _ = mlp_case()
    op = jacobian_operator(fn, x)
    top, low = transpose_krylov(op, 4, 10, generator=gen(), interrupt=lambda: op.num_jacobian_products >= 3)
    assert op.num_jacobian_products == 3 and top.num_matvecs == 3
    assert torch.isnan(top.eigenvalues[:, 3]).all() and torch.isfinite(top.eigenvalues[:, :3]).all()
    assert torch.isinf(top.residuals).all() and torch.isinf(low.residuals).all()


def test_bad_arguments():
    op = MatrixOperator(torch.eye(4).expand(1, 4, 4))
    with pytest.raises(ValueError, match="num_steps must be an int >= 1"):
        krylov_run(op, 0)
    with pytest.raises(ValueError, match="which must be one of"):
        krylov_run(op, 2).ritz(1, "XX")
    with pytest.raises(TypeError, match="BatchedOperator"):
        krylov_run(torch.eye(4), 2)
    with pytest.raises(TypeError, match="JacobianOperator"):
        transpose_krylov(op, 1, 2)
