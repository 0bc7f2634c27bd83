"""The copy flag: its conformal threshold against exact order statistics, its rate on exchangeable data, the
lowest rate a small held-out set supports, and the copy rule that bounds it."""

from __future__ import annotations

import math

import pytest
import torch

from memcallback.measure import memorization_labels
from memcallback.measure.copy_flag import CopyFlag, copy_flag, lower_conformal_threshold
from memcallback.measure.ground_truth import COPY_RATIO


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


def test_the_flag_is_a_copy_below_the_heldout_ratios_quantile() -> None:
    """Well-separated training images: the 5% quantile of the held-out ratios (0.77) is above 1/3, so the flag is the
    copy rule; near copies are flagged, and held-out images exactly when they pass the 1/3 rule."""
    g = torch.Generator().manual_seed(1)
    train, heldout = torch.randn(20, 3, 4, generator=g), torch.randn(199, 3, 4, generator=g)
    flag = copy_flag(heldout, train, fpr=0.05)
    null = brute_ratio(heldout, train).sort().values
    assert (flag.fpr, flag.num_null) == (0.05, 199)
    assert flag.null_ratio == pytest.approx(null[9].item(), rel=1e-6)  # floor(200 * 0.05) = 10th smallest
    assert flag.null_ratio > COPY_RATIO and flag.ratio == COPY_RATIO
    copies = train[:5] + 1e-3 * torch.randn(5, 3, 4, generator=g)
    assert flag(brute_ratio(copies, train)).all()
    held = memorization_labels(heldout, train)  # the statistic the flag is applied to
    assert torch.equal(flag(held.distance_ratio), held.copied)


def test_where_never_trained_images_pass_the_copy_rule_the_quantile_bounds_the_flag() -> None:
    """Half the held-out images are near-duplicates of training images (as overlapping patches are): the 1/3 rule
    alone would flag them all, the flag only those below the 5% quantile, strictly below the 10th smallest."""
    g = torch.Generator().manual_seed(4)
    train = torch.randn(20, 6, generator=g)
    heldout = torch.cat([train[torch.arange(100) % 20] + 0.05 * torch.randn(100, 6, generator=g),
                         torch.randn(99, 6, generator=g)])
    flag = copy_flag(heldout, train, fpr=0.05)
    held = memorization_labels(heldout, train)
    assert flag.null_ratio < COPY_RATIO and flag.ratio == flag.null_ratio
    assert held.copied.sum().item() >= 100
    ratios = held.distance_ratio.sort().values
    assert flag(held.distance_ratio).sum().item() == int((ratios < ratios[9]).sum())


def test_without_heldout_images_the_flag_is_the_copy_rule_at_no_stated_rate() -> None:
    g = torch.Generator().manual_seed(5)
    train = torch.randn(12, 6, generator=g)
    samples = torch.cat([train[:4] + 0.01 * torch.randn(4, 6, generator=g), torch.randn(60, 6, generator=g)])
    flag = CopyFlag.copy_rule()
    labels = memorization_labels(samples, train)
    assert torch.equal(flag(labels.distance_ratio), labels.copied) and labels.copied[:4].all()
    assert math.isnan(flag.fpr) and flag.num_null == 0 and flag.ratio == COPY_RATIO


def test_samples_of_the_data_distribution_are_flagged_at_the_stated_rate() -> None:
    """A model that generalizes perfectly: its samples are new draws of the data distribution, exchangeable with
    the held-out images, whatever the training set. Over 40 training sets, the samples below the quantile are
    exactly floor(1000 * 0.02) / 1000 = 1.9% in expectation, and the flag, the copies among them, no more."""
    g = torch.Generator().manual_seed(2)
    below, flagged = [], []
    for _ in range(40):
        train, heldout, samples = (torch.randn(n, 6, generator=g) for n in (30, 999, 1000))
        flag = copy_flag(heldout, train, fpr=0.02)
        ratio = brute_ratio(samples, train)
        below.append((ratio < flag.null_ratio).double().mean().item())
        flagged.append(flag(ratio).double().mean().item())
        assert flagged[-1] <= below[-1]
    assert sum(below) / len(below) == pytest.approx(0.019, abs=0.004)


def test_few_heldout_images_give_the_lowest_rate_they_support() -> None:
    g = torch.Generator().manual_seed(3)
    train, heldout = torch.randn(8, 5, generator=g), torch.randn(20, 5, generator=g)
    flag = copy_flag(heldout, train, fpr=0.01)  # 0.01 needs 99
    assert flag.fpr == pytest.approx(1 / 21)
    assert flag.null_ratio == pytest.approx(brute_ratio(heldout, train).min().item(), rel=1e-6)
    with pytest.raises(ValueError, match="fpr must be in"):
        copy_flag(heldout, train, fpr=0.0)
