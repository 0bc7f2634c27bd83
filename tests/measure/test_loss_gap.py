import pytest
import torch
from analytic import GaussianModel, IsotropicMixtureModel
from torch import nn

from memcallback.diffusion import NoiseSchedule
from memcallback.measure import loss_gap, names
from memcallback.measure.loss_gap import loss_noise, loss_timesteps

SCHEDULE = NoiseSchedule.linear(100)


class LinearNetwork(nn.Module):
    """A DiffusionModel module with one linear layer."""

    schedule, prediction_type, data_shape = SCHEDULE, "epsilon", (3,)

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3, 3)

    def model_output(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        return self.linear(x_t)


def gaussian_errors(images: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor, var: float) -> torch.Tensor:
    """``[n, K]`` the closed-form error of the exact denoiser of N(0, var I): eps_hat(x) = sigma x / (a^2 var + s^2)."""
    out = torch.empty(len(images), len(timesteps), dtype=torch.float64)
    for k, t in enumerate(timesteps.tolist()):
        a, s = SCHEDULE.alpha(t, torch.float64).item(), SCHEDULE.sigma(t, torch.float64).item()
        z = noise[:, k].double()
        x = a * images.double() + s * z
        out[:, k] = (s * x / (a**2 * var + s**2) - z).pow(2).mean(dim=1)
    return out


def test_errors_and_gap_match_the_closed_form_of_a_gaussian() -> None:
    var, d = 0.7, 6
    model = GaussianModel(torch.zeros(d), var * torch.eye(d), SCHEDULE)
    g = torch.Generator().manual_seed(0)
    train, heldout = torch.randn(5, d, generator=g), 2 * torch.randn(5, d, generator=g)
    result = loss_gap(model, train, heldout, num_levels=4, seed=3)
    timesteps = loss_timesteps(100, 4)
    assert timesteps.tolist() == [12, 37, 62, 87]  # floor((k + 1/2) T / K)
    noise = loss_noise(5, (d,), 4, seed=3)
    expected_train, expected_heldout = (gaussian_errors(x, noise, timesteps, var) for x in (train, heldout))
    torch.testing.assert_close(result.train, expected_train, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(result.heldout, expected_heldout, rtol=1e-5, atol=1e-7)
    per_level = (expected_heldout.mean(0) - expected_train.mean(0)) / expected_heldout.mean(0)
    assert result.gap == pytest.approx(float(per_level.mean()), rel=1e-5)
    assert result.summary() == pytest.approx({names.LOSS_TRAIN_IMAGES: float(expected_train.mean()),
                                              names.LOSS_HELDOUT_IMAGES: float(expected_heldout.mean()),
                                              names.LOSS_GAP: float(per_level.mean())}, rel=1e-5)


def test_the_same_images_on_both_sides_give_no_gap() -> None:
    model = GaussianModel(torch.zeros(4), torch.eye(4), SCHEDULE)
    images = torch.randn(6, 4, generator=torch.Generator().manual_seed(1))
    assert loss_gap(model, images, images.clone()).gap == 0.0


def test_a_memorized_image_is_denoised_far_better_than_heldout_images() -> None:
    """A near point mass at the training image: the exact denoiser recovers its noise at low and middle noise
    levels (error ~0), while held-out images from the broad part keep the Gaussian error."""
    d = 8
    memorized = torch.full((1, d), 2.0)
    model = IsotropicMixtureModel(torch.cat([memorized, torch.zeros(1, d)]), torch.tensor([1e-6, 1.0]),
                                  torch.tensor([0.5, 0.5]), SCHEDULE)
    heldout = 0.5 * torch.randn(4, d, generator=torch.Generator().manual_seed(1))
    result = loss_gap(model, memorized.expand(4, d), heldout)
    assert result.gap > 0.5
    assert result.train[:, :5].max() < 1e-3


@pytest.mark.parametrize("prediction_type", ["v_prediction", "sample", "score"])
def test_the_gap_does_not_depend_on_what_the_network_predicts(prediction_type: str) -> None:
    cov = torch.diag(torch.tensor([1.0, 0.3, 0.05, 0.01]))
    g = torch.Generator().manual_seed(2)
    train, heldout = torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g)
    eps_gap = loss_gap(GaussianModel(torch.zeros(4), cov, SCHEDULE), train, heldout)
    other = loss_gap(GaussianModel(torch.zeros(4), cov, SCHEDULE, prediction_type), train, heldout)
    assert other.gap == pytest.approx(eps_gap.gap, rel=1e-4)


def test_a_module_keeps_its_mode_and_gets_no_gradients() -> None:
    network = LinearNetwork().train()
    result = loss_gap(network, torch.randn(2, 3), torch.randn(2, 3))
    assert network.training and network.linear.weight.grad is None
    assert not result.train.requires_grad


def test_a_bfloat16_module_is_fed_in_its_own_dtype() -> None:
    network = LinearNetwork().to(torch.bfloat16)
    result = loss_gap(network, torch.randn(4, 3), torch.randn(4, 3))  # float32 images
    assert torch.isfinite(result.train).all() and result.train.dtype == torch.float64


def test_bad_input_is_refused_with_what_to_change() -> None:
    model = GaussianModel(torch.zeros(4), torch.eye(4), SCHEDULE)
    x = torch.zeros(3, 4)
    with pytest.raises(ValueError, match=r"train_images must have shape \[n, \*\(4,\)\]"):
        loss_gap(model, torch.zeros(3, 5), x)
    with pytest.raises(ValueError, match="as many held-out as training images"):
        loss_gap(model, x, torch.zeros(2, 4))
    with pytest.raises(ValueError, match=r"num_levels must be in \[1, 100\]"):
        loss_gap(model, x, x, num_levels=0)
    with pytest.raises(ValueError, match=r"noise must have shape \(3, 10, 4\)"):
        loss_gap(model, x, x, noise=torch.zeros(3, 4))
