"""AUROC of real-valued statistics: exact (Mann-Whitney with ties) for any range of values."""

import math

import pytest
import torch

from memcallback.measure import auroc


def _pairwise_auroc(values: torch.Tensor, positive: torch.Tensor) -> float:
    """Reference: the fraction of (positive, negative) pairs ordered correctly, a tie counting one half."""
    pos, neg = values[positive.bool()].double(), values[~positive.bool()].double()
    diff = pos[:, None] - neg[None, :]
    return ((diff > 0).double() + 0.5 * (diff == 0).double()).mean().item()


def test_large_raw_values_are_ranked_not_squashed() -> None:
    # A logit-based implementation saturates sigmoid(800..950) to 1.0 in float32 and returns 0.5.
    assert auroc(torch.tensor([800.0, 900, 850, 950]), torch.tensor([0, 1, 0, 1])) == 1.0
    assert auroc(torch.tensor([-1e6, -2e6, 3e7, 4e7]), torch.tensor([1, 1, 0, 0])) == 0.0


@pytest.mark.parametrize("scale", [1e-3, 1.0, 1e4])
def test_matches_the_pairwise_definition_with_ties(scale: float) -> None:
    g = torch.Generator().manual_seed(0)
    values = torch.randint(0, 7, (300,), generator=g).double() * scale  # many ties
    positive = torch.rand(300, generator=g) < 0.3
    assert auroc(values, positive) == pytest.approx(_pairwise_auroc(values, positive), abs=1e-12)


def test_all_tied_is_one_half_and_one_class_is_nan() -> None:
    assert auroc(torch.full((6,), 3.0), torch.tensor([0, 1, 0, 1, 1, 0])) == 0.5
    assert math.isnan(auroc(torch.tensor([1.0, 2.0]), torch.tensor([1, 1])))


def test_an_unmeasured_value_makes_the_auroc_nan_not_a_rank() -> None:
    assert math.isnan(auroc(torch.tensor([1.0, math.nan, 3.0]), torch.tensor([1, 0, 1])))


def test_the_summary_has_exactly_the_keys_of_the_schema() -> None:
    """One summary path, one schema: ``SharpnessReport.summary()`` keys are ``names.summary_keys``, with and
    without ground truth, for two timesteps; the AUROC keys are the AUROC of the score against the copy label."""
    from analytic import GaussianModel

    from memcallback.diffusion import NoiseSchedule
    from memcallback.measure import SharpnessConfig, analyze, names

    model = GaussianModel(torch.zeros(3), torch.diag(torch.tensor([1.0, 0.1, 0.01])), NoiseSchedule.linear(100))
    train = torch.randn(5, 3, generator=torch.Generator().manual_seed(0))
    for train_data in (None, train):
        report = analyze(model, num_samples=6, sigmas=(0.1, 0.3), num_sampling_steps=4, train_data=train_data,
                         config=SharpnessConfig(k=1, solver="dense"))
        timesteps = list(report.stats)
        summary = report.summary()
        assert set(summary) == names.summary_keys(timesteps, train_data is not None)
        assert set(report.per_sample()) == names.per_sample_keys(timesteps, train_data is not None)
        if train_data is not None:
            copied = report.labels.copied
            for t in timesteps:
                expected = auroc(report.stats[t].memorization_score, copied)
                assert summary[names.at_timestep(t, names.AUROC)] == pytest.approx(expected, nan_ok=True)


def test_the_summary_bounds_the_copy_rate_from_the_probes_labels() -> None:
    """``nn_rate_lower`` is the Clopper-Pearson bound of the probes' copies; NaN when a label is missing."""
    from memcallback.measure import names
    from memcallback.measure.ground_truth import copy_rate_lower_bound
    from memcallback.measure.report import summarize

    copied = torch.zeros(64)
    copied[[3, 17, 40]] = 1.0
    per_sample = {names.NN_RATE: copied, names.at_timestep(20, names.SCORE): torch.linspace(0, 1, 64)}
    summary = summarize(per_sample, [20], seconds=1.0)
    assert summary[names.NN_RATE] == pytest.approx(3 / 64)
    assert summary[names.NN_RATE_LOWER] == copy_rate_lower_bound(3, 64)
    copied[5] = math.nan
    assert math.isnan(summarize(per_sample, [20], seconds=1.0)[names.NN_RATE_LOWER])
