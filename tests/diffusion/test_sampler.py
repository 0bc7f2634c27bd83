import pytest
import torch
from analytic import GaussianModel

from memcallback.diffusion import check_model, ddim_sample, ddpm_sample, randn, sampling_timesteps


def test_grid_includes_requested_timesteps() -> None:
    grid = sampling_timesteps(1000, 10, include=[27, 59])
    assert grid[0] == 999 and grid[-1] == 0
    assert {27, 59} <= set(grid.tolist())
    assert (grid[1:] < grid[:-1]).all()
    with pytest.raises(ValueError, match="outside"):
        sampling_timesteps(1000, 10, include=[1000])


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_ddim_with_exact_score_recovers_the_gaussian(gaussian_model: GaussianModel, prediction_type: str) -> None:
    """Deterministic DDIM (probability-flow ODE) maps N(0, I) onto the data Gaussian N(m, C)."""
    gaussian_model.prediction_type = prediction_type
    gen = torch.Generator().manual_seed(0)
    noise = randn((20000, 3), gen, dtype=torch.float64)
    out = ddim_sample(gaussian_model, noise, num_steps=100).sample
    torch.testing.assert_close(out.mean(0), gaussian_model.mean, atol=0.04, rtol=0)
    torch.testing.assert_close(torch.cov(out.T), gaussian_model.cov, atol=0.06, rtol=0.05)


def test_ddpm_with_exact_score_recovers_the_gaussian(gaussian_model: GaussianModel) -> None:
    gen = torch.Generator().manual_seed(0)
    noise = randn((20000, 3), gen, dtype=torch.float64)
    out = ddpm_sample(gaussian_model, noise, generator=gen).sample
    torch.testing.assert_close(out.mean(0), gaussian_model.mean, atol=0.04, rtol=0)
    torch.testing.assert_close(torch.cov(out.T), gaussian_model.cov, atol=0.06, rtol=0.05)


def test_sampler_is_deterministic_and_records_trajectory(gaussian_model: GaussianModel) -> None:
    def run(seed: int):
        gen = torch.Generator().manual_seed(seed)
        noise = randn((8, 3), gen, dtype=torch.float64)
        return ddim_sample(gaussian_model, noise, num_steps=10, eta=0.5, generator=gen, record=[199, 27])

    a, b, c = run(0), run(0), run(1)
    assert torch.equal(a.sample, b.sample) and not torch.equal(a.sample, c.sample)
    assert set(a.trajectory) == {199, 27}
    assert torch.equal(a.trajectory[199], randn((8, 3), torch.Generator().manual_seed(0), dtype=torch.float64))
    assert torch.equal(a.trajectory[27], b.trajectory[27])


def test_guidance_scale_one_equals_conditional(gaussian_model: GaussianModel) -> None:
    noise = torch.randn(4, 3, dtype=torch.float64)
    cond = torch.zeros(4, dtype=torch.long)
    plain = ddim_sample(gaussian_model, noise, 5, cond=cond).sample
    guided = ddim_sample(gaussian_model, noise, 5, cond=cond, guidance_scale=3.0).sample
    torch.testing.assert_close(plain, guided)  # the Gaussian model ignores cond: guidance must be a no-op


def test_bad_model_and_shapes(gaussian_model: GaussianModel) -> None:
    with pytest.raises(TypeError, match="missing"):
        check_model(object())
    with pytest.raises(ValueError, match="noise must have shape"):
        ddim_sample(gaussian_model, torch.randn(4, 5, dtype=torch.float64))
    assert check_model(gaussian_model) is gaussian_model
