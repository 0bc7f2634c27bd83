import math

import pytest
import torch

from memcallback.measure.sharpness import Interrupt, SharpnessConfig, measure_sharpness, memorization_score
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
    config = SharpnessConfig(k=k, solver=solver, krylov_steps=None, tol=1e-8, trace_probes=400, lanczos_iters=40,
                             asymmetry_probes=4)
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
    torch.testing.assert_close(stats.eps_norm_sq, sigma**2 * s.square().sum(1))
    hs = torch.linalg.vector_norm(fn(s) , dim=1)  # H s = -P s = fn(s) for a linear score
    torch.testing.assert_close(stats.hs_norm, sigma**3 * hs)
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
    assert sharp.memorization_score.min() > 0.99 and sharp.flagged.all()
    assert flat.memorization_score.max() < 0.02 and not flat.flagged.any()
    assert sharp.flat_count.eq(0).all() and flat.flat_count.eq(8).all()
    assert sharp.effective_dim.max() < 0.1 and (flat.effective_dim - 8).abs().max() < 0.1


def test_lanczos_path_matches_dense_path_on_a_network() -> None:
    torch.manual_seed(0)
    d = 24
    net = torch.nn.Sequential(torch.nn.Linear(d, 64), torch.nn.SiLU(), torch.nn.Linear(64, d)).double()
    fn = lambda x: -net(x) / 0.2  # noqa: E731  a non-symmetric Jacobian
    x = torch.randn(5, d, dtype=torch.float64)
    dense = measure_sharpness(fn, x, 0, 0.2, SharpnessConfig(k=4, solver="dense"))
    free = measure_sharpness(fn, x, 0, 0.2, SharpnessConfig(k=4, solver="lanczos", krylov_steps=None, tol=1e-9,
                                                              lanczos_iters=23,
                                                              asymmetry_probes=200),
                             generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(free.mu, dense.mu, atol=1e-6, rtol=0)
    torch.testing.assert_close(free.min_mu, dense.min_mu, atol=1e-6, rtol=0)
    torch.testing.assert_close(free.hs_norm, dense.hs_norm)
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
    torch.testing.assert_close(memorization_score(mu, d_eff, flat, 64, "mean_mu"), torch.tensor([0.0, 1.0]))
    between = torch.tensor([[1.3, 0.5], [0.9, 0.8]])  # mu > 1 offsets the sharp direction; clamp only the mean
    torch.testing.assert_close(memorization_score(between, d_eff, flat, 64, "mean_mu"), torch.tensor([0.1, 0.15]))
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
        ({"krylov_steps": 8, "k": 8}, "krylov_steps"),
        ({"solver": "power", "trace_estimator": "deflated"}, "trace_estimator"),
        ({"krylov_steps": None, "trace_estimator": "deflated"}, "trace_estimator"),
        ({"trace_estimator": "slq"}, "trace_estimator"),
        ({"asymmetry_probes": -1}, "asymmetry_probes"),
        ({"jvp": "fwd"}, "jvp"),
        ({"krylov_product": "J"}, "krylov_product"),
        ({"krylov_product": "JT", "krylov_steps": None}, "krylov_product"),
        ({"krylov_product": "JT", "trace_estimator": "deflated"}, "krylov_product"),
    ],
)
def test_bad_config(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        SharpnessConfig(**kwargs)


def test_k_larger_than_dimension() -> None:
    with pytest.raises(ValueError, match="larger than the data dimension"):
        measure_sharpness(lambda x: -x, torch.randn(2, 3), 0, 0.1, SharpnessConfig(k=4))
    assert math.isclose(SharpnessConfig().flag_threshold, 0.25)


def _cov(d: int) -> torch.Tensor:
    """A covariance spectrum whose top 5 and bottom 1 normalized eigenvalues are well separated at sigma = 0.1."""
    top = torch.tensor([2.0, 1.0, 0.3, 0.1, 0.03], dtype=torch.float64)
    return torch.cat([top, torch.logspace(-3.5, -2.5, d - 6, dtype=torch.float64), torch.tensor([1e-5]).double()])


def _within(values: torch.Tensor, spectrum: torch.Tensor, residual: torch.Tensor) -> bool:
    """Every value lies within its row's residual of the spectrum (``[d]`` shared or ``[B, d]`` per row): the
    Ritz-value bound for symmetric S."""
    gap = (values[..., None] - (spectrum[:, None, :] if spectrum.dim() == 2 else spectrum)).abs().amin(-1)
    return bool((gap <= residual.reshape(residual.shape[0], *[1] * (gap.dim() - 1)) + 1e-9).all())


def test_budget_path_both_ends_from_one_run_with_residuals() -> None:
    """Defaults (matrix free): a fixed Lanczos budget gives top-k and min_mu with their residuals; the cost is
    exactly 1 (||J s||) + 2 * krylov_steps (spectrum) + trace_probes (one J^T z each); asymmetry is off."""
    sigma, d, k = 0.1, 64, 5  # d above the default budget: every step is taken
    fn, mu = gaussian_score(_cov(d), sigma)
    x = torch.randn(3, d, dtype=torch.float64)
    config = SharpnessConfig(k=k, solver="lanczos")
    stats = measure_sharpness(fn, x, 27, sigma, config, generator=torch.Generator().manual_seed(0))
    assert stats.products == {"hs_norm": 1, "spectrum": 2 * config.krylov_steps, "min_eigenvalue": 0,
                              "trace": config.trace_probes}
    assert stats.num_matvecs == 1 + 2 * config.krylov_steps + config.trace_probes and not stats.partial
    assert _within(stats.mu, mu, stats.ritz_residual) and _within(stats.min_mu[:, None], mu, stats.min_mu_residual)
    torch.testing.assert_close(stats.mu, mu[:k].expand(3, k), atol=1e-6, rtol=0)  # well separated: converged
    torch.testing.assert_close(stats.min_mu, mu[-1].expand(3), atol=1e-6, rtol=0)
    assert torch.equal(stats.converged, stats.ritz_residual <= config.tol) and stats.converged.all()
    assert torch.isnan(stats.asymmetry).all()
    assert stats.eigenvectors is not None and stats.eigenvectors.shape == (3, k, d)


def test_warm_start_from_the_previous_ritz_vectors() -> None:
    """With a tiny budget a cold start is inaccurate; the previous check's Ritz vectors fix that."""
    sigma, d, k = 0.1, 40, 3
    fn, mu = gaussian_score(_cov(d), sigma)
    x = torch.randn(2, d, dtype=torch.float64)
    config = SharpnessConfig(k=k, solver="lanczos", krylov_steps=k + 1)
    cold = measure_sharpness(fn, x, 0, sigma, config, generator=torch.Generator().manual_seed(0))
    warm = cold
    for _ in range(4):
        warm = measure_sharpness(fn, x, 0, sigma, config, v0=warm.eigenvectors,
                                 generator=torch.Generator().manual_seed(0))
    assert (warm.ritz_residual < 0.5 * cold.ritz_residual).all()
    assert (warm.mu - mu[:k]).abs().max() < (cold.mu - mu[:k]).abs().max()
    assert _within(warm.mu, mu, warm.ritz_residual)


def test_jacobian_only_trace_of_a_non_symmetric_jacobian() -> None:
    """tr S = tr J: the trace takes one J^T product per probe, and the antisymmetric part drops out."""
    d, sigma = 30, 0.2
    g = torch.Generator().manual_seed(1)
    diag = -torch.rand(d, generator=g, dtype=torch.float64) / sigma**2
    G = torch.randn(d, d, generator=g, dtype=torch.float64)
    J = torch.diag(diag) + (G - G.T)
    x = torch.randn(2, d, dtype=torch.float64)
    stats = measure_sharpness(lambda z: z @ J.T, x, 0, sigma, SharpnessConfig(k=2, solver="lanczos", trace_probes=3))
    torch.testing.assert_close(stats.trace_mu, sigma**2 * diag.sum().expand(2))  # Rademacher: exact on a diagonal
    assert stats.products["trace"] == 3


@pytest.mark.parametrize("estimator", ["hutchinson", "deflated"])
def test_trace_estimators_match_the_dense_trace(estimator: str) -> None:
    torch.manual_seed(0)
    d = 24
    net = torch.nn.Sequential(torch.nn.Linear(d, 64), torch.nn.SiLU(), torch.nn.Linear(64, d)).double()
    fn = lambda x: -net(x) / 0.2 - 3 * x  # noqa: E731
    x = torch.randn(4, d, dtype=torch.float64)
    dense = measure_sharpness(fn, x, 0, 0.2, SharpnessConfig(k=4, solver="dense"))
    free = measure_sharpness(fn, x, 0, 0.2, SharpnessConfig(k=4, solver="lanczos", krylov_steps=12, trace_probes=400,
                                                             trace_estimator=estimator),
                             generator=torch.Generator().manual_seed(1))
    assert (free.trace_mu - dense.trace_mu).abs().max() < 0.05 * dense.trace_mu.abs().min()


@pytest.mark.parametrize("budget", [None, 40])
def test_power_solver(budget: int | None) -> None:
    sigma, d, k = 0.1, 40, 4
    fn, mu = gaussian_score(_cov(d), sigma)
    x = torch.randn(2, d, dtype=torch.float64)
    config = SharpnessConfig(k=k, solver="power", krylov_steps=budget, tol=1e-8)
    stats = measure_sharpness(fn, x, 0, sigma, config, generator=torch.Generator().manual_seed(0))
    assert _within(stats.mu, mu, stats.ritz_residual) and _within(stats.min_mu[:, None], mu, stats.min_mu_residual)
    if budget is None:
        torch.testing.assert_close(stats.mu, mu[:k].expand(2, k), atol=1e-6, rtol=0)
        torch.testing.assert_close(stats.min_mu, mu[-1].expand(2), atol=1e-6, rtol=0)
    else:  # budget // block iterations per end: blocks of 2k at the top, of 2 at the bottom
        assert stats.products["spectrum"] == 2 * (budget // (2 * k)) * 2 * k
        assert stats.products["min_eigenvalue"] == 2 * (budget // 2) * 2


def _counting(fn):
    calls = []

    def counted(z: torch.Tensor) -> torch.Tensor:
        calls.append(z.shape[0])
        return fn(z)

    return counted, calls


@pytest.mark.parametrize(("solver", "product", "jvp"),
                         [("lanczos", "S", "double_backward"), ("lanczos", "JT", "forward"), ("power", "S", "forward")])
def test_fixed_sequence_of_network_calls(solver: str, product: str, jvp: str) -> None:
    """With a budget the network sees the same calls whatever the data and however fast it converges."""
    torch.manual_seed(0)
    d = 32
    net = torch.nn.Sequential(torch.nn.Linear(d, 64), torch.nn.Tanh(), torch.nn.Linear(64, d)).double()
    config = SharpnessConfig(k=3, solver=solver, krylov_steps=12, krylov_product=product, asymmetry_probes=2, jvp=jvp)
    gaussian, _ = gaussian_score(_cov(d), 0.1)
    runs = [(lambda z: net(z) - z, torch.randn(2, d, dtype=torch.float64), None),
            (lambda z: net(z) - z, 50 * torch.randn(2, d, dtype=torch.float64), None),  # saturated tanh
            (gaussian, torch.randn(2, d, dtype=torch.float64), None)]
    exact_vectors = torch.linalg.eigh(dense_jacobian(gaussian, runs[2][1]))[1].flip(-1)[:, :, :3].mT
    runs.append((gaussian, runs[2][1], exact_vectors))  # an exact warm start: an invariant subspace at once
    sequences, products = [], []
    for fn, x, v0 in runs:
        counted, calls = _counting(fn)
        stats = measure_sharpness(counted, x, 0, 0.1, config, v0=v0, generator=torch.Generator().manual_seed(0))
        sequences.append(calls)
        products.append(stats.products)
    assert all(seq == sequences[0] for seq in sequences) and all(p == products[0] for p in products)


def test_interrupt_cuts_the_measurement_short() -> None:
    sigma, d, k = 0.1, 40, 3
    fn, mu = gaussian_score(_cov(d), sigma)
    x = torch.randn(2, d, dtype=torch.float64)
    config = SharpnessConfig(k=k, solver="lanczos", krylov_steps=20)
    asked = []

    def after(n: int):
        def interrupt() -> bool:
            asked.append(1)
            return len(asked) >= n
        return interrupt

    stats = measure_sharpness(fn, x, 0, sigma, config, interrupt=after(1))  # before ||J s||: nothing measured
    assert stats.partial and stats.products == {} and torch.isnan(stats.mu).all() and torch.isnan(stats.hs_norm).all()
    asked.clear()
    stats = measure_sharpness(fn, x, 0, sigma, config, interrupt=after(6))  # ||J s||, spectrum, 4 Krylov steps
    assert stats.partial and stats.products == {"hs_norm": 1, "spectrum": 8, "min_eigenvalue": 0}
    assert len(asked) == 6 and stats.num_matvecs == 9
    assert torch.isfinite(stats.mu).all() and _within(stats.mu, mu, stats.ritz_residual)
    assert torch.isnan(stats.trace_mu).all() and torch.isnan(stats.effective_dim).all()
    asked.clear()
    full = measure_sharpness(fn, x, 0, sigma, config, interrupt=after(10**6))
    assert not full.partial and len(asked) == 1 + 1 + 20 + 1  # before ||J s||, the spectrum, after every step, trace
    latch = Interrupt(lambda: True)
    assert latch() and latch.fired and latch()


def test_transpose_krylov_budget_on_a_non_symmetric_network() -> None:
    """krylov_product="JT": Ritz pairs of S on the Krylov space of J^T; exact with d steps, and each mu within its
    residual of the exact spectrum with fewer; cost steps + k + 1 products."""
    torch.manual_seed(0)
    d, sigma, k = 24, 0.2, 4
    net = torch.nn.Sequential(torch.nn.Linear(d, 64), torch.nn.SiLU(), torch.nn.Linear(64, d)).double()
    fn = lambda x: -net(x) / sigma  # noqa: E731
    x = torch.randn(3, d, dtype=torch.float64)
    dense = measure_sharpness(fn, x, 0, sigma, SharpnessConfig(k=d, solver="dense"))
    full = measure_sharpness(fn, x, 0, sigma, SharpnessConfig(k=k, solver="lanczos", krylov_steps=d,
                                                              krylov_product="JT"))
    torch.testing.assert_close(full.mu, dense.mu[:, :k], atol=1e-8, rtol=0)
    torch.testing.assert_close(full.min_mu, dense.min_mu, atol=1e-8, rtol=0)
    short = measure_sharpness(fn, x, 0, sigma, SharpnessConfig(k=k, solver="lanczos", krylov_steps=10,
                                                               krylov_product="JT"))
    assert short.products["spectrum"] == 10 + k + 1 and short.products["min_eigenvalue"] == 0
    assert _within(short.mu, dense.mu, short.ritz_residual)
    assert _within(short.min_mu[:, None], dense.mu, short.min_mu_residual)


@pytest.mark.parametrize(("dim", "config"), [
    (300, SharpnessConfig()),  # the default budget
    (300, SharpnessConfig(krylov_product="JT", asymmetry_probes=2)),
    (300, SharpnessConfig(trace_estimator="deflated", min_eigenvalue=False)),
    (12, SharpnessConfig(solver="lanczos")),  # fewer dimensions than Krylov steps
    (12, SharpnessConfig(solver="dense")),
])
def test_the_predicted_products_are_those_a_measurement_makes(dim: int, config: SharpnessConfig) -> None:
    """``products_per_sample`` (what the cost governor predicts a check from) against the products counted."""
    fn, _ = gaussian_score(torch.logspace(-3, 0, dim, dtype=torch.float64), 0.3)
    stats = measure_sharpness(fn, torch.randn(2, dim, dtype=torch.float64), 10, 0.3, config,
                              generator=torch.Generator().manual_seed(0))
    assert config.products_per_sample(dim) == stats.num_matvecs


def test_no_products_are_predicted_where_the_count_depends_on_the_data() -> None:
    assert SharpnessConfig(krylov_steps=None).products_per_sample(300) is None
    assert SharpnessConfig(solver="power").products_per_sample(300) is None
