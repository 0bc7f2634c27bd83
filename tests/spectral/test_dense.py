"""The dense reference path."""

from __future__ import annotations

import pytest
import torch

from memcallback.spectral import dense_jacobian, dense_spectrum, lanczos, power_iteration
from memcallback.spectral import jacobian_operator as jop


def test_dense_jacobian_is_exact(case):
    _, fn, x, S = case
    J = dense_jacobian(fn, x)
    torch.testing.assert_close(0.5 * (J + J.mT), S)


def test_dense_spectrum_of_a_gaussian_score():
    from spectral_cases import gaussian_case, realistic_spectrum

    fn, x, _ = gaussian_case()
    res = dense_spectrum(fn, x, return_eigenvectors=True)
    expected = realistic_spectrum(x.shape[1]).sort(descending=True).values
    torch.testing.assert_close(res.eigenvalues, expected.expand(x.shape[0], -1))
    assert res.eigenvectors.shape == (x.shape[0], x.shape[1], x.shape[1])
    assert res.converged.all() and res.residuals.max() < 1e-10 and res.num_matvecs == x.shape[1]
    # A gradient field is symmetric: symmetrize=False gives the same spectrum.
    torch.testing.assert_close(dense_spectrum(fn, x, symmetrize=False).eigenvalues, res.eigenvalues)


def test_iterative_solvers_agree_with_the_dense_path_on_a_network():
    torch.manual_seed(3)
    net = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.GELU(), torch.nn.Linear(64, 16))
    x = torch.randn(4, 16)
    with torch.inference_mode():
        ref = dense_spectrum(net, x).eigenvalues
        scale = ref.abs().amax(-1, keepdim=True)
        for which, expected in (("LA", ref[:, :5]), ("SA", ref.flip(-1)[:, :5])):
            lz = lanczos(jop(net, x), 5, which, generator=torch.Generator().manual_seed(0))
            pw = power_iteration(jop(net, x), 5, which, generator=torch.Generator().manual_seed(0))
            assert ((lz.eigenvalues - expected).abs() <= 1e-3 * scale).all()
            assert ((pw.eigenvalues - expected).abs() <= 1e-3 * scale).all()


def test_dense_errors():
    with pytest.raises(ValueError, match="same shape as x"):
        dense_spectrum(lambda z: z.sum(-1, keepdim=True), torch.ones(2, 3))
    with pytest.raises(ValueError, match=r"x must be a torch\.Tensor"):
        dense_jacobian(lambda z: z, [1.0, 2.0])
    with pytest.raises(ValueError, match="NaN/inf"):
        dense_jacobian(lambda z: z, torch.tensor([[1.0, float("inf")]]))
