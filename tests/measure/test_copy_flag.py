"""The copy flag: its conformal threshold against exact order statistics, its rate on exchangeable data, and the
lowest rate a small held-out set supports."""

from __future__ import annotations

import math

import pytest
import torch

from memcallback.measure import memorization_labels
from memcallback.measure.copy_flag import copy_flag, lower_conformal_threshold


def brute_ratio(x: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Nearest over second-nearest l2 distance, from the full distance matrix."""
    d = torch.cdist(x.flatten(1).double(), reference.flatten(1).double()).sort(dim=1).values
    return d[:, 0] / d[:, 1]


def test_the_threshold_is_the_lower_conformal_order_statistic() -> None:
    values = torch.randperm(64).double()  # the values 0..63 in any order
    assert lower_conformal_threshold(values, 0.02) == 0.0  # floor(65 * 0.02) = 1st smallest
    assert lower_conformal_threshold(values, 0.1) == 5.0  # floor(65 * 0.1) = 6th smallest
    assert lower_conformal_threshold(values[:48], 0.02) == -math.inf  # floor(49 * 0.02) = 0: nothing flagged
    with_nan = torch.cat([values, torch.tensor([math.nan, -math.inf])])
    assert lower_conformal_threshold(with_nan, 0.1) == 5.0  # non-finite values are left out
    with pytest.raises(ValueError, match="fpr must be in"):
        lower_conformal_threshold(values, 1.0)


@pytest.mark.parametrize(("n", "fpr"), [(99, 0.01), (64, 0.05)])
def test_an_exchangeable_value_is_flagged_at_most_at_the_stated_rate(n: int, fpr: float) -> None:
    """A new value below the threshold of n null values from the same distribution: probability exactly
    floor((n + 1) fpr) / (n + 1) <= fpr."""
    g = torch.Generator().manual_seed(0)
    trials = 20_000
    null, new = torch.rand(trials, n, generator=g), torch.rand(trials, generator=g)
    flagged = torch.tensor([new[i] < lower_conformal_threshold(null[i], fpr) for i in range(trials)]).double().mean()
    exact = math.floor((n + 1) * fpr) / (n + 1)
    assert exact <= fpr
    assert abs(flagged.item() - exact) < 4 * math.sqrt(exact * (1 - exact) / trials)


def test_the_flag_is_the_heldout_ratios_quantile_and_catches_copies() -> None:
    g = torch.Generator().manual_seed(1)
    train, heldout = torch.randn(20, 3, 4, generator=g), torch.randn(199, 3, 4, generator=g)
    flag = copy_flag(heldout, train, fpr=0.05)
    null = brute_ratio(heldout, train).sort().values
    assert (flag.fpr, flag.num_null) == (0.05, 199)
    assert flag.ratio == pytest.approx(null[9].item(), rel=1e-6)  # floor(200 * 0.05) = 10th smallest
    copies = train[:5] + 1e-3 * torch.randn(5, 3, 4, generator=g)
    assert flag(brute_ratio(copies, train)).all()
    held_ratio = memorization_labels(heldout, train).distance_ratio  # the statistic the flag is applied to
    assert flag(held_ratio).sum().item() == 9  # strictly below the 10th smallest


def test_samples_of_the_data_distribution_are_flagged_at_the_stated_rate() -> None:
    """A model that generalizes perfectly: its samples are new draws of the data distribution, exchangeable with
    the held-out images, whatever the training set. Over 40 training sets, 2% of 1,000 samples each are flagged
    at most (exactly floor(1000 * 0.02) / 1000 = 1.9% in expectation)."""
    g = torch.Generator().manual_seed(2)
    rates = []
    for _ in range(40):
        train, heldout, samples = (torch.randn(n, 6, generator=g) for n in (30, 999, 1000))
        flag = copy_flag(heldout, train, fpr=0.02)
        rates.append(flag(brute_ratio(samples, train)).double().mean().item())
    assert sum(rates) / len(rates) == pytest.approx(0.019, abs=0.004)


def test_few_heldout_images_give_the_lowest_rate_they_support() -> None:
    g = torch.Generator().manual_seed(3)
    train, heldout = torch.randn(8, 5, generator=g), torch.randn(20, 5, generator=g)
    flag = copy_flag(heldout, train, fpr=0.01)  # 0.01 needs 99
    assert flag.fpr == pytest.approx(1 / 21)
    assert flag.ratio == pytest.approx(brute_ratio(heldout, train).min().item(), rel=1e-6)
    with pytest.raises(ValueError, match="fpr must be in"):
        copy_flag(heldout, train, fpr=0.0)
