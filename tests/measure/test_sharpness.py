import math

import pytest
import torch

from memcallback.measure.sharpness import SharpnessConfig, measure_sharpness, memorization_score
from memcallback.spectral import dense_jacobian


def gaussian_score(cov_eigs: torch.Tensor, sigma: float, seed: int = 0):
    """Score of x_t for data N(0, C) with C = Q diag(cov_eigs) Q^T, at noise level sigma (alpha^2 = 1 - sigma^2).

    Its Hessian is -(alpha^2 C + sigma^2 I)^{-1}, so mu_i = alpha^2 c_i / (alpha^2 c_i + sigma^2) exactly.
    """
    d = cov_eigs.numel()
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=torch.float64))
    a2 = 1 - sigma**2
    precision = q @ torch.diag(1 / (a2 * cov_eigs + sigma**2)) @ q.T
    mu = (a2 * cov_eigs / (a2 * cov_eigs + sigma**2)).sort(descending=True).values
    return (lambda x: -(x @ precision)), mu


@pytest.mark.parametrize("solver", ["dense", "lanczos"])
def test_gaussian_spectrum_is_exact(solver: str) -> None:
    sigma, d, k = 0.1, 40, 5
    cov = torch.cat([torch.tensor([2.0, 1.5, 1.0, 0.7]), torch.logspace(-4, -1, d - 4, dtype=torch.float64)]).double()
    fn, mu = gaussian_score(cov, sigma)
    x = torch.randn(3, d, dtype=torch.float64)
    config = SharpnessConfig(k=k, solver=solver, tol=1e-8, trace_probes=400, lanczos_iters=40)
    stats = measure_sharpness(fn, x, 27, sigma, config, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(stats.mu, mu[:k].expand(3, k), atol=1e-6, rtol=0)
    torch.testing.assert_close(stats.min_mu, mu[-1].expand(3), atol=1e-6, rtol=0)
    exact_trace = (mu - 1).sum()  # sigma^2 tr H = sum(mu - 1)
    tol = 1e-9 if solver == "dense" else 0.2 * abs(exact_trace.item())
    torch.testing.assert_close(stats.trace_mu, exact_trace.expand(3), atol=tol, rtol=0)
    torch.testing.assert_close(stats.effective_dim, d + stats.trace_mu)
    assert stats.asymmetry.abs().max() < 1e-6  # a true gradient field
    # ||eps||^2 = sigma^2 ||s||^2 and sigma^3 ||H s||
    s = fn(x)
    torch.testing.assert_close(stats.score_norm_sq, sigma**2 * s.square().sum(1))
    hs = torch.linalg.vector_norm(fn(s) , dim=1)  # H s = -P s = fn(s) for a linear score
    torch.testing.assert_close(stats.hessian_score_norm, sigma**3 * hs)
    assert stats.converged.all()


def test_flat_and_sharp_gaussians_score_apart() -> None:
    """A near-point-mass (memorized) density is sharp in every direction; a broad one is flat along its data."""
    sigma, d = 0.1, 16
    sharp_fn, _ = gaussian_score(torch.full((d,), 1e-5, dtype=torch.float64), sigma)
    flat_fn, _ = gaussian_score(torch.cat([torch.full((8,), 1.0), torch.full((8,), 1e-5)]).double(), sigma)
    x = torch.randn(4, d, dtype=torch.float64)
    config = SharpnessConfig(k=4)
    sharp = measure_sharpness(sharp_fn, x, 0, sigma, config)
    flat = measure_sharpness(flat_fn, x, 0, sigma, config)
    assert sharp.score.min() > 0.99 and sharp.memorized.all()
    assert flat.score.max() < 0.02 and not flat.memorized.any()
    assert sharp.flat_count.eq(0).all() and flat.flat_count.eq(8).all()
    assert sharp.effective_dim.max() < 0.1 and (flat.effective_dim - 8).abs().max() < 0.1


def test_lanczos_path_matches_dense_path_on_a_network() -> None:
    torch.manual_seed(0)
    d = 24
    net = torch.nn.Sequential(torch.nn.Linear(d, 64), torch.nn.SiLU(), torch.nn.Linear(64, d)).double()
    fn = lambda x: -net(x) / 0.2  # noqa: E731  a non-symmetric Jacobian
    x = torch.randn(5, d, dtype=torch.float64)
    dense = measure_sharpness(fn, x, 0, 0.2, SharpnessConfig(k=4, solver="dense"))
    free = measure_sharpness(fn, x, 0, 0.2, SharpnessConfig(k=4, solver="lanczos", tol=1e-9, lanczos_iters=23,
                                                              asymmetry_probes=200),
                             generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(free.mu, dense.mu, atol=1e-6, rtol=0)
    torch.testing.assert_close(free.min_mu, dense.min_mu, atol=1e-6, rtol=0)
    torch.testing.assert_close(free.hessian_score_norm, dense.hessian_score_norm)
    J = dense_jacobian(fn, x)
    exact = torch.linalg.matrix_norm(J - J.mT) / torch.linalg.matrix_norm(J)
    torch.testing.assert_close(dense.asymmetry, exact)
    assert (free.asymmetry - exact).abs().max() < 0.15 * exact.max()
    assert free.eigenvectors is not None and free.eigenvectors.shape == (5, 4, d)


def test_score_statistics() -> None:
    mu = torch.tensor([[1.2, 0.9], [0.1, -0.3]])
    d_eff = torch.tensor([30.0, 2.0])
    flat = torch.tensor([2, 0])
    torch.testing.assert_close(memorization_score(mu, d_eff, flat, 64, "top_mu"), torch.tensor([0.05, 0.95]))
    torch.testing.assert_close(memorization_score(mu, d_eff, flat, 64, "effective_dim"),
                               torch.tensor([1 - 30 / 64, 1 - 2 / 64]))
    torch.testing.assert_close(memorization_score(mu, d_eff, flat, 64, "flat_fraction"), torch.tensor([0.0, 1.0]))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"k": 0}, "k=0"),
        ({"solver": "arnoldi"}, "solver"),
        ({"lanczos_iters": 4, "k": 8}, "lanczos_iters"),
        ({"tol": 0.0}, "tol"),
        ({"trace_probes": 1}, "trace_probes"),
        ({"score_statistic": "trace"}, "score_statistic"),
        ({"flag_threshold": 1.5}, "flag_threshold"),
        ({"chunk_size": 0}, "chunk_size"),
    ],
)
def test_bad_config(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        SharpnessConfig(**kwargs)


def test_k_larger_than_dimension() -> None:
    with pytest.raises(ValueError, match="larger than the data dimension"):
        measure_sharpness(lambda x: -x, torch.randn(2, 3), 0, 0.1, SharpnessConfig(k=4))
    assert math.isclose(SharpnessConfig().flag_threshold, 0.39)
