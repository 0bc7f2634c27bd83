import pytest
import torch
from analytic import GaussianModel, IsotropicMixtureModel

from memcallback.diffusion import NoiseSchedule
from memcallback.measure.reference import sharpness_gap
from memcallback.measure.sharpness import SharpnessConfig

SCHEDULE = NoiseSchedule.linear(1000)
T = SCHEDULE.timestep_for_sigma(0.1)


def test_gaussian_density_has_no_gap_and_the_closed_form_score() -> None:
    """A Gaussian's Hessian is the same everywhere: both halves give 1 - mean clamp(mu) of the closed form."""
    cov = torch.tensor([1.0, 0.5, 1e-4, 1e-4, 1e-4, 1e-4])
    model = GaussianModel(torch.zeros(6), torch.diag(cov), SCHEDULE)
    g = torch.Generator().manual_seed(0)
    train, heldout = torch.randn(5, 6, generator=g), 3 * torch.randn(5, 6, generator=g)
    result = sharpness_gap(model, train, heldout, T, SharpnessConfig(k=2))
    a2 = SCHEDULE.alpha(T, torch.float64).item() ** 2
    s2 = SCHEDULE.sigma(T, torch.float64).item() ** 2
    expected = 1 - sum(a2 * c / (a2 * c + s2) for c in (1.0, 0.5)) / 2
    torch.testing.assert_close(result.train.memorization_score, torch.full((5,), expected).to(result.train.mu),
                               atol=1e-5, rtol=0)
    assert result.gap == pytest.approx(0.0, abs=1e-6)
    assert not result.partial


def test_memorized_image_gives_a_large_gap() -> None:
    """One image memorized (a near point mass) inside a broad density: sharp at it, flat at held-out images."""
    d = 8
    memorized = torch.full((1, d), 2.0)
    model = IsotropicMixtureModel(torch.cat([memorized, torch.zeros(1, d)]), torch.tensor([1e-6, 1.0]),
                                  torch.tensor([0.5, 0.5]), SCHEDULE)
    heldout = 0.5 * torch.randn(1, d, generator=torch.Generator().manual_seed(1))  # typical of the broad part
    result = sharpness_gap(model, memorized, heldout, T, SharpnessConfig(k=4))
    summary = result.summary()
    assert summary["score_train_images"] > 0.95  # every direction sharp at the memorized image
    assert summary["score_heldout_images"] < 0.05  # flat: mu = a^2 / (a^2 + s^2) ~ 0.99
    assert summary["sharpness_gap"] == pytest.approx(summary["score_train_images"] - summary["score_heldout_images"])


def test_interrupt_gives_nan_gap_and_partial() -> None:
    model = GaussianModel(torch.zeros(4), torch.eye(4), SCHEDULE)
    x = torch.zeros(2, 4)
    result = sharpness_gap(model, x, x, T, SharpnessConfig(k=2), interrupt=lambda: True)
    assert result.partial and result.train is None
    assert all(v != v for v in result.summary().values())  # NaN


@pytest.mark.parametrize(
    ("train", "heldout", "match"),
    [
        (torch.zeros(2, 3), torch.zeros(2, 4), "train_images must have shape"),
        (torch.zeros(2, 4), torch.zeros(3, 4), "as many held-out as training images"),
        (torch.zeros(0, 4), torch.zeros(0, 4), "at least one"),
    ],
)
def test_bad_images(train: torch.Tensor, heldout: torch.Tensor, match: str) -> None:
    model = GaussianModel(torch.zeros(4), torch.eye(4), SCHEDULE)
    with pytest.raises(ValueError, match=match):
        sharpness_gap(model, train, heldout, T)
