import math

import pytest
import torch

from memcallback.diffusion import NoiseSchedule


@pytest.mark.parametrize("schedule", [NoiseSchedule.linear(), NoiseSchedule.cosine(), NoiseSchedule.karras(100)])
def test_variance_preserving(schedule: NoiseSchedule) -> None:
    t = torch.arange(schedule.num_timesteps)
    alpha, sigma = schedule.alpha(t, torch.float64), schedule.sigma(t, torch.float64)
    torch.testing.assert_close(alpha**2 + sigma**2, torch.ones_like(alpha), rtol=0, atol=1e-12)
    assert (sigma[1:] > sigma[:-1]).all()


def test_linear_matches_ddpm_closed_form() -> None:
    schedule = NoiseSchedule.linear(1000, 1e-4, 0.02)
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    for t in (0, 27, 500, 999):
        expected = torch.prod(1 - betas[: t + 1])
        assert schedule.alpha(t, torch.float64).item() == pytest.approx(math.sqrt(expected), rel=1e-12)
    assert schedule.sigma(0, torch.float64).item() == pytest.approx(0.01, rel=1e-9)


def test_cosine_closed_form() -> None:
    T, s = 1000, 0.008
    schedule = NoiseSchedule.cosine(T, s)
    f = lambda u: math.cos((u / T + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    for t in (0, 100, 500):
        assert schedule.alphas_cumprod[t].item() == pytest.approx(f(t + 1) / f(0), rel=1e-9)


def test_from_sigmas_is_rescaled_variance_exploding() -> None:
    sigmas = torch.tensor([0.01, 0.1, 1.0, 10.0], dtype=torch.float64)
    schedule = NoiseSchedule.from_sigmas(sigmas)
    t = torch.arange(4)
    ratio = schedule.sigma(t, torch.float64) / schedule.alpha(t, torch.float64)
    torch.testing.assert_close(ratio, sigmas)


def test_add_noise_and_timestep_for_sigma() -> None:
    schedule = NoiseSchedule.linear()
    x0, eps = torch.randn(4, 2), torch.randn(4, 2)
    t = torch.tensor([0, 10, 100, 999])
    xt = schedule.add_noise(x0, eps, t)
    torch.testing.assert_close(xt, schedule.alpha(t)[:, None] * x0 + schedule.sigma(t)[:, None] * eps)
    t_sigma = schedule.timestep_for_sigma(0.1)
    assert abs(schedule.sigma(t_sigma).item() - 0.1) < 0.005


def test_bad_inputs_have_clear_errors() -> None:
    with pytest.raises(ValueError, match="strictly decreasing"):
        NoiseSchedule(torch.tensor([0.5, 0.9]))
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        NoiseSchedule(torch.tensor([1.5, 0.9]))
    with pytest.raises(ValueError, match="Unknown schedule kind"):
        NoiseSchedule.create("quadratic")
    with pytest.raises(TypeError, match="integer"):
        NoiseSchedule.linear().alpha(torch.tensor([0.5]))
    with pytest.raises(ValueError, match="sigma must lie"):
        NoiseSchedule.linear().timestep_for_sigma(2.0)
