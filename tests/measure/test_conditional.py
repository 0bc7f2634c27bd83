"""Conditional metrics against closed forms: an analytic class-conditional Gaussian model."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from memcallback.app.models import DiffusionModule, ResidualMLP
from memcallback.diffusion import NoiseSchedule
from memcallback.measure.analysis import probe_noise
from memcallback.measure.conditional import conditional_metrics, conditional_report
from memcallback.measure.sharpness import SharpnessConfig

D, C, T = 6, 3, 100


class ConditionalGaussian(nn.Module):
    """``x_0 | c ~ N(m_c, S_c)`` for ``c = 0..C-1`` and the null model ``x_0 ~ N(m_e, S_e)`` (a broad Gaussian).

    At timestep t, ``x_t | c ~ N(alpha m_c, alpha^2 S_c + sigma^2 I)``, so with ``P_c = (alpha^2 S_c + sigma^2 I)^-1``
    the exact score is ``s(x, c) = -P_c (x - alpha m_c)`` and its Hessian ``-P_c``. The network predicts the score
    itself (``prediction_type="score"``), in float64; ``cond=None`` and label -1 give the null model.
    """

    def __init__(self, ignore_cond: bool = False) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        means = torch.randn(C + 1, D, generator=g, dtype=torch.float64)
        a = torch.randn(C + 1, D, D, generator=g, dtype=torch.float64)
        covs = a @ a.mT / D + 0.05 * torch.eye(D, dtype=torch.float64)
        covs[C] = covs[C] + 3.0 * torch.eye(D, dtype=torch.float64)  # the null model is broad
        self.means = nn.Parameter(means, requires_grad=False)
        self.covs = nn.Parameter(covs, requires_grad=False)
        self.schedule = NoiseSchedule.linear(T)
        self.prediction_type = "score"
        self.data_shape = (D,)
        self.ignore_cond = ignore_cond

    def precision(self, t: int, index: int) -> Tensor:
        alpha, sigma = self.schedule.alpha(t, torch.float64), self.schedule.sigma(t, torch.float64)
        return torch.linalg.inv(alpha**2 * self.covs[index] + sigma**2 * torch.eye(D, dtype=torch.float64))

    def model_output(self, x_t: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        index = torch.full((x_t.shape[0],), C) if cond is None or self.ignore_cond else torch.where(cond < 0, C, cond)
        alpha, sigma = self.schedule.coefficients(t, x_t)
        cov = alpha[:, :, None] ** 2 * self.covs[index] + sigma[:, :, None] ** 2 * torch.eye(D, dtype=x_t.dtype)
        return -torch.linalg.solve(cov, (x_t - alpha * self.means[index]).unsqueeze(-1)).squeeze(-1)

    def exact(self, x: Tensor, t: int, c: int) -> tuple[Tensor, Tensor]:
        """``(||s^D||, ||H^D s^D||)`` of one state ``x [D]`` under condition ``c``, in closed form."""
        alpha = self.schedule.alpha(t, torch.float64)
        p_c, p_e = self.precision(t, c), self.precision(t, C)
        s_d = -p_c @ (x - alpha * self.means[c]) + p_e @ (x - alpha * self.means[C])
        return s_d.norm(), (-(p_c - p_e) @ s_d).norm()


@pytest.fixture(scope="module")
def gaussian() -> ConditionalGaussian:
    return ConditionalGaussian()


def _tiny_module() -> DiffusionModule:
    torch.manual_seed(0)
    return DiffusionModule(ResidualMLP((4,), hidden=16, num_blocks=1, num_classes=3), num_timesteps=50)


@pytest.mark.parametrize("t", [T - 1, 40, 3])
def test_metrics_match_closed_form(gaussian: ConditionalGaussian, t: int) -> None:
    x = torch.randn(6, D, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    cond = torch.tensor([0, 1, 2, 2, 1, 0])
    m = conditional_metrics(gaussian, x, t, cond)
    expected = torch.stack([torch.stack(gaussian.exact(xi, t, int(c))) for xi, c in zip(x, cond, strict=True)])
    torch.testing.assert_close(m.sd_norm.double(), expected[:, 0], rtol=1e-6, atol=0)
    torch.testing.assert_close(m.hds.double(), expected[:, 1], rtol=1e-6, atol=0)
    sigma = gaussian.schedule.sigma(t, torch.float64).item()
    assert m.sigma == sigma
    torch.testing.assert_close(m.sd_norm_normalized, sigma * m.sd_norm)
    torch.testing.assert_close(m.hds_normalized, sigma**3 * m.hds)


def test_report_at_first_step_matches_closed_form(gaussian: ConditionalGaussian) -> None:
    s, g = 4, 2
    report = conditional_report(gaussian, torch.arange(C), num_samples_per_cond=s, num_generations=g, seed=3)
    assert report.timestep == T - 1 and report.samples is None and report.labels is None
    x_T = probe_noise(s * g, (D,), 3, torch.float64)  # the same noises for every condition
    expected = torch.tensor([[gaussian.exact(x_T[j * g + k], T - 1, c)[1].item() for k in range(g)]
                             for c in range(C) for j in range(s)], dtype=torch.float64)
    torch.testing.assert_close(report.hds_per_generation.double(), expected, rtol=1e-6, atol=0)
    torch.testing.assert_close(report.hds, report.hds_per_generation.mean(dim=1))
    assert report.cond_index.tolist() == [c for c in range(C) for _ in range(s)]
    per_condition = report.per_condition()
    torch.testing.assert_close(per_condition["hds"], expected.mean(dim=1).view(C, s).mean(dim=1).float(),
                               rtol=1e-5, atol=0)
    summary = report.summary()
    assert summary["sharpest_condition"] == float(per_condition["hds"].argmax())
    assert summary["cond1/sd_norm"] == pytest.approx(per_condition["sd_norm"][1].item())
    assert {"hds", "sd_norm", "hds_normalized", "sd_norm_normalized", "seconds"} <= summary.keys()
    aurocs = report.auroc([int(per_condition["hds"].argmax())])
    assert 0.0 <= aurocs["hds"] <= 1.0 and 0.0 <= aurocs["sd_norm"] <= 1.0


def test_report_at_later_timestep_follows_guided_ddim(gaussian: ConditionalGaussian) -> None:
    from memcallback.diffusion import ddim_sample

    report = conditional_report(gaussian, torch.tensor([2, 0]), num_samples_per_cond=3, timestep=20,
                                guidance_scale=2.0, num_sampling_steps=10, seed=1)
    x_T = probe_noise(3, (D,), 1, torch.float64).repeat(2, 1)
    cond = torch.tensor([2, 2, 2, 0, 0, 0])
    x_t = ddim_sample(gaussian, x_T, 10, cond=cond, guidance_scale=2.0, record=[20]).trajectory[20]
    expected = torch.tensor([gaussian.exact(x, 20, int(c))[1].item() for x, c in zip(x_t, cond, strict=True)])
    torch.testing.assert_close(report.hds.double(), expected.double(), rtol=1e-6, atol=0)
    assert report.samples is not None and report.samples.shape == (6, 1, D)


def test_rows_are_independent_and_chunking_is_exact() -> None:
    module = _tiny_module()
    x = torch.randn(5, 4, generator=torch.Generator().manual_seed(0))
    cond = torch.tensor([0, 2, 1, -1, 2])
    together = conditional_metrics(module, x, 30, cond)
    chunked = conditional_metrics(module, x, 30, cond, chunk_size=2)
    real = [0, 1, 2, 4]  # row 3 alone is all-null, which is an error (see test_errors)
    alone = [conditional_metrics(module, x[i : i + 1], 30, cond[i : i + 1]) for i in real]
    for name in ("sd_norm", "hds"):
        torch.testing.assert_close(getattr(chunked, name), getattr(together, name), rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(torch.cat([getattr(a, name) for a in alone]), getattr(together, name)[real],
                                   rtol=1e-5, atol=1e-7)
    assert together.sd_norm[3] == 0 and together.hds[3] == 0  # label -1 is the null condition itself


def test_deterministic_with_seed_and_restores_modes_under_inference_mode() -> None:
    module = _tiny_module()
    module.train()
    module.network.time_embed.eval()  # a submodule deliberately in eval mode stays so
    rng = torch.get_rng_state()
    with torch.inference_mode():
        a = conditional_report(module, torch.arange(3), num_samples_per_cond=4, num_generations=2, seed=5)
    b = conditional_report(module, torch.arange(3), num_samples_per_cond=4, num_generations=2, seed=5)
    c = conditional_report(module, torch.arange(3), num_samples_per_cond=4, num_generations=2, seed=6)
    assert torch.equal(a.hds_per_generation, b.hds_per_generation)
    assert torch.equal(a.sd_norm_per_generation, b.sd_norm_per_generation)
    assert not torch.equal(a.hds_per_generation, c.hds_per_generation)
    assert module.training and not module.network.time_embed.training
    assert all(p.grad is None for p in module.parameters())
    assert torch.equal(torch.get_rng_state(), rng)


def test_ground_truth_labels_the_generated_samples(gaussian: ConditionalGaussian) -> None:
    train = torch.randn(10, D, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    report = conditional_report(gaussian, torch.arange(C), num_samples_per_cond=2, num_generations=3,
                                num_sampling_steps=5, train_data=train)
    assert report.samples is not None and report.samples.shape == (C * 2, 3, D)
    assert report.labels is not None and report.labels.copied.shape == (C * 2 * 3,)
    assert report.per_sample()["nn_rate"].shape == (C * 2,)
    assert report.per_condition()["nn_rate"].shape == (C,)


@pytest.mark.parametrize("solver", ["dense", "lanczos"])
def test_spectrum_per_condition_is_the_conditional_hessian(gaussian: ConditionalGaussian, solver: str) -> None:
    t, k = 10, 2
    config = SharpnessConfig(k=k, solver=solver, lanczos_iters=D, tol=1e-8, trace_probes=4)
    report = conditional_report(gaussian, torch.arange(C), num_samples_per_cond=3, timestep=t,
                                num_sampling_steps=5, spectrum=config)
    assert sorted(report.spectra) == list(range(C))
    for c in range(C):
        exact = torch.linalg.eigvalsh(-gaussian.precision(t, c)).flip(0)[:k]  # the Hessian -P_c, largest first
        torch.testing.assert_close(report.spectra[c].eigenvalues.double(), exact.expand(3, k), rtol=1e-6, atol=1e-8)
    assert report.per_condition()["spectrum/mu_max"].shape == (C,)


def test_errors() -> None:
    unconditional = DiffusionModule(ResidualMLP((4,), hidden=8, num_blocks=1), num_timesteps=50)
    with pytest.raises(ValueError, match="unconditional"):
        conditional_report(unconditional, torch.arange(2))
    with pytest.raises(ValueError, match="ignores its condition"):
        conditional_report(ConditionalGaussian(ignore_cond=True), torch.arange(2), num_samples_per_cond=2)
    module = _tiny_module()
    with pytest.raises(ValueError, match="every condition given is the null one"):
        conditional_report(module, torch.tensor([-1]))
    x = torch.randn(4, 4)
    with pytest.raises(ValueError, match="one condition per row"):
        conditional_metrics(module, x, 10, torch.arange(3))
    with pytest.raises(ValueError, match=r"x must have shape \[B, \*\(4,\)\]"):
        conditional_metrics(module, torch.randn(4, 5), 10, torch.arange(4) % 3)
    with pytest.raises(ValueError, match="timestep"):
        conditional_metrics(module, x, 50, torch.arange(4) % 3)
    with pytest.raises(ValueError, match=r"cond must be a tensor \[C, \.\.\.\]"):
        conditional_report(module, torch.tensor(1))
    with pytest.raises(ValueError, match="num_generations"):
        conditional_report(module, torch.arange(3), num_generations=0)
