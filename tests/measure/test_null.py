"""The flag's conformal threshold against exact order statistics, and its false-positive guarantee."""

from __future__ import annotations

import math
import sys

import pytest
import torch

from memcallback.measure.null import conformal_threshold, min_null_size


def test_the_threshold_is_the_conformal_order_statistic() -> None:
    scores = torch.randperm(64).double()  # the values 0..63 in any order
    assert conformal_threshold(scores, 0.02) == 63.0  # ceil(65 * 0.98) = 64th smallest
    assert conformal_threshold(scores, 0.1) == 58.0  # ceil(65 * 0.9) = 59th smallest
    assert conformal_threshold(scores[:48], 0.02) == math.inf  # 48 < 49 = min_null_size(0.02)
    with_nan = torch.cat([scores, torch.tensor([math.nan, math.inf])])
    assert conformal_threshold(with_nan, 0.02) == 63.0  # non-finite values are left out
    assert [min_null_size(fpr) for fpr in (0.5, 0.1, 0.05, 0.02, 0.01)] == [1, 9, 19, 49, 99]
    assert min_null_size(1e-320) == sys.maxsize  # 1 / fpr overflows: no null set is large enough
    assert conformal_threshold(scores, 1e-320) == math.inf


@pytest.mark.parametrize("fpr", [0, 1, -0.1, 1.5])
def test_bad_rates_are_refused(fpr: float) -> None:
    with pytest.raises(ValueError, match="fpr must be in"):
        conformal_threshold(torch.zeros(10), fpr)


@pytest.mark.parametrize(("n", "fpr"), [(64, 0.02), (99, 0.05)])
def test_an_exchangeable_sample_is_flagged_at_most_at_the_stated_rate(n: int, fpr: float) -> None:
    """20,000 draws of n null scores and one new score from the same distribution: the new one exceeds the
    threshold with probability exactly (n + 1 - k) / (n + 1), k = ceil((n + 1)(1 - fpr)), which is <= fpr."""
    g = torch.Generator().manual_seed(0)
    trials = 20_000
    null, new = torch.randn(trials, n, generator=g), torch.randn(trials, generator=g)
    flagged = torch.tensor([new[i] > conformal_threshold(null[i], fpr) for i in range(trials)]).double().mean()
    k = math.ceil((n + 1) * (1 - fpr))
    exact = (n + 1 - k) / (n + 1)
    assert exact <= fpr
    assert abs(flagged.item() - exact) < 4 * math.sqrt(exact * (1 - exact) / trials)
