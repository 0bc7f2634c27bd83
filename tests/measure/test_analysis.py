import math

import pytest
import torch
from analytic import GaussianModel
from torch import nn

from memcallback.diffusion import NoiseSchedule
from memcallback.measure.analysis import analyze, measurement_mode, probe_noise, resolve_timesteps
from memcallback.measure.report import auroc
from memcallback.measure.sharpness import SharpnessConfig


def gaussian(cov_eigs: list[float]) -> GaussianModel:
    d = len(cov_eigs)
    return GaussianModel(torch.zeros(d), torch.diag(torch.tensor(cov_eigs)), NoiseSchedule.linear(1000))


def test_report_matches_closed_form_spectrum() -> None:
    """For Gaussian data the spectrum at every state is known: mu_i = a^2 c_i / (a^2 c_i + s^2)."""
    model = gaussian([1.0, 0.5, 1e-4, 1e-4, 1e-4, 1e-4])
    report = analyze(model, num_samples=8, sigmas=(0.1,), timesteps=(59,), config=SharpnessConfig(k=2))
    assert list(report.stats) == [59, model.schedule.timestep_for_sigma(0.1)]
    for t, stats in report.stats.items():
        a2 = model.schedule.alpha(t, torch.float64).item() ** 2
        s2 = model.schedule.sigma(t, torch.float64).item() ** 2
        expected = torch.tensor([a2 * c / (a2 * c + s2) for c in (1.0, 0.5)], dtype=torch.float64)
        torch.testing.assert_close(stats.mu, expected.expand(8, 2).to(stats.mu), atol=1e-5, rtol=0)
        assert stats.sigma == pytest.approx(math.sqrt(s2))
    summary = report.summary()
    assert summary["mu_max"] == pytest.approx(report.primary.mu[:, 0].mean().item())
    assert summary["t59/mu_max"] == pytest.approx(report.stats[59].mu[:, 0].mean().item())
    assert summary["flagged_fraction"] == 0.0  # the top-2 directions are flat: nothing is memorized
    assert report.samples.shape == (8, 6)


def test_point_mass_is_flagged_and_ground_truth_agrees() -> None:
    """A model whose density is (nearly) a point mass at its training image reproduces it: all flagged."""
    model = gaussian([1e-5] * 6)
    train = torch.stack([torch.zeros(6), torch.ones(6), -torch.ones(6)])
    report = analyze(model, num_samples=16, sigmas=(0.1,), config=SharpnessConfig(k=3), train_data=train)
    assert report.primary.flagged.all()
    assert report.labels is not None and report.labels.rate == 1.0
    assert math.isnan(report.summary()["auroc"])  # one class only: AUROC is undefined, not 0 or 1


def test_labels_only_samples_and_labels_the_probes_as_a_full_measurement_does() -> None:
    model = gaussian([1e-5] * 3 + [1.0] * 3)
    train = torch.stack([torch.zeros(6), torch.ones(6), -torch.ones(6)])
    full = analyze(model, num_samples=16, sigmas=(0.1,), config=SharpnessConfig(k=3), train_data=train)
    labelled = analyze(model, num_samples=16, sigmas=(0.1,), config=SharpnessConfig(k=3), train_data=train,
                       labels_only=True)
    assert labelled.stats == {} and not labelled.partial
    assert torch.equal(labelled.samples, full.samples)
    assert torch.equal(labelled.labels.distance_ratio, full.labels.distance_ratio)
    with pytest.raises(ValueError, match="labels_only=True labels the samples against train_data"):
        analyze(model, num_samples=4, labels_only=True)


def test_probes_are_fixed_and_measurement_is_deterministic() -> None:
    model = gaussian([1.0, 0.1, 0.01])
    torch.testing.assert_close(probe_noise(4, (3,), seed=3), probe_noise(4, (3,), seed=3))
    config = SharpnessConfig(k=2, solver="lanczos", lanczos_iters=3, trace_probes=4)
    a = analyze(model, num_samples=4, config=config, seed=3)
    b = analyze(model, num_samples=4, config=config, seed=3)
    assert torch.equal(a.primary.trace_mu, b.primary.trace_mu)
    assert torch.equal(a.samples, b.samples)


class Wrapped(nn.Module):
    """An nn.Module model with a frozen submodule in eval mode and a dropout in train mode."""

    def __init__(self) -> None:
        super().__init__()
        self.schedule, self.prediction_type, self.data_shape = NoiseSchedule.linear(100), "epsilon", (4,)
        self.net = nn.Sequential(nn.Linear(5, 16), nn.Dropout(0.5), nn.Linear(16, 4))
        self.frozen = nn.Linear(4, 4).eval()

    def model_output(self, x_t, t, cond=None):
        return self.net(torch.cat([x_t, t[:, None].float() / 100], dim=1))


def test_measurement_restores_modes_grads_and_rng() -> None:
    model = Wrapped().train()
    model.frozen.eval()
    for p in model.parameters():
        p.grad = torch.full_like(p, 7.0)
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    report = analyze(model, num_samples=4, config=SharpnessConfig(k=2))
    assert torch.equal(torch.rand(3), expected_next)  # global RNG untouched
    assert model.training and model.net[1].training and not model.frozen.training
    assert all(torch.equal(p.grad, torch.full_like(p, 7.0)) for p in model.parameters())
    # in eval mode dropout is off, so the measurement is deterministic
    again = analyze(model, num_samples=4, config=SharpnessConfig(k=2))
    assert torch.equal(report.primary.mu, again.primary.mu)


def test_works_under_inference_mode() -> None:
    model = Wrapped()
    with torch.inference_mode():
        report = analyze(model, num_samples=3, config=SharpnessConfig(k=2))
    assert torch.isfinite(report.primary.mu).all()
    with measurement_mode(model):
        assert torch.is_grad_enabled() and not torch.is_inference_mode_enabled()


def test_auroc_and_bad_inputs() -> None:
    assert auroc(torch.tensor([0.1, 0.2, 0.8, 0.9]), torch.tensor([0, 0, 1, 1])) == 1.0
    assert auroc(torch.tensor([0.9, 0.8, 0.2, 0.1]), torch.tensor([0, 0, 1, 1])) == 0.0
    model = gaussian([1.0, 0.1])
    with pytest.raises(ValueError, match="noise must have shape"):
        analyze(model, noise=torch.zeros(2, 3))
    with pytest.raises(ValueError, match="train_data must have shape"):
        analyze(model, num_samples=2, config=SharpnessConfig(k=1), train_data=torch.zeros(5, 3))
    with pytest.raises(ValueError, match="timesteps"):
        resolve_timesteps(model, (), (1000,))
    with pytest.raises(ValueError, match="at least one"):
        resolve_timesteps(model, (), ())
    with pytest.raises(TypeError, match="missing"):
        analyze(object())


class Counted:
    """A DiffusionModel wrapper that counts network calls (model_output) and can fire an interrupt after N."""

    def __init__(self, model: GaussianModel, fire_after: int | None = None) -> None:
        self.model, self.fire_after, self.calls, self.asked = model, fire_after, 0, 0
        self.schedule, self.prediction_type, self.data_shape = model.schedule, model.prediction_type, model.data_shape

    def model_output(self, x_t, t, cond=None):
        self.calls += 1
        return self.model.model_output(x_t, t, cond)

    def interrupt(self) -> bool:
        self.asked += 1
        return self.fire_after is not None and self.calls >= self.fire_after


BUDGET = SharpnessConfig(k=2, solver="lanczos", krylov_steps=6, trace_probes=4)


def test_fixed_number_of_network_calls_whatever_the_data() -> None:
    """The budget path's calls depend on the config only: equal counts for a flat and a point-mass density."""
    counts = []
    for cov in ([1.0, 0.5, 0.3, 0.2, 0.1, 0.05], [1e-5] * 6):
        model = Counted(gaussian(cov))
        analyze(model, num_samples=4, sigmas=(0.1,), timesteps=(59,), num_sampling_steps=10, config=BUDGET)
        counts.append(model.calls)
    assert counts[0] == counts[1]


@pytest.mark.parametrize(("fire_after", "measured", "last_partial"),
                         [(3, [], False), (12, [], False), (13, [59], True), (14, [59, 27], True)])
def test_interrupt_returns_a_partial_report_within_the_calls_reached(fire_after, measured, last_partial) -> None:
    """Network calls: 12 DDIM steps (10 grid points + 2 recorded timesteps), then per noise level the one
    forward that builds the graph (its output is the score; every product is a reverse pass over it): 14."""
    full = Counted(gaussian([1.0, 0.5, 0.3, 0.2, 0.1, 0.05]))
    complete = analyze(full, num_samples=4, sigmas=(0.1,), timesteps=(59,), num_sampling_steps=10, config=BUDGET,
                       interrupt=full.interrupt)
    assert full.calls == 14 and not complete.partial and list(complete.stats) == [59, 27]
    model = Counted(gaussian([1.0, 0.5, 0.3, 0.2, 0.1, 0.05]), fire_after=fire_after)
    report = analyze(model, num_samples=4, sigmas=(0.1,), timesteps=(59,), num_sampling_steps=10, config=BUDGET,
                     interrupt=model.interrupt)
    assert report.partial and model.calls == fire_after  # not one network call after the interrupt fired
    assert list(report.stats) == measured
    if measured:
        assert [s.partial for s in report.stats.values()] == [False] * (len(measured) - 1) + [last_partial]


def test_no_interrupt_means_a_complete_report() -> None:
    report = analyze(gaussian([1.0, 0.1, 0.01]), num_samples=2, config=SharpnessConfig(k=1), interrupt=lambda: False)
    assert not report.partial and not report.primary.partial
