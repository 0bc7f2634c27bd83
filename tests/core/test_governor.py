"""The cost governor: its tiers, its decisions on an injected clock, their agreement across ranks and resumes, and
the stop it keeps in time (no wall time is measured here: every second is the test's own clock)."""

from __future__ import annotations

import dataclasses
import math
import warnings

import pytest
import torch
from test_watch import DENSE, PROBES, IsotropicMixtureModel, TrainableGaussian, memorized_mixture, run_ranks, watch

from memcallback.core import GovernorConfig, MeasureRequest, MemorizationWatch, StopConfig, measure, sample_rows
from memcallback.core.governor import CostGovernor, Tier, predicted_labels_cost, predicted_probe_cost
from memcallback.measure import loss_gap, names
from memcallback.measure.ground_truth import copy_rate_power
from memcallback.measure.loss_gap import NUM_LEVELS, loss_noise

LOSS_MONITOR = StopConfig(monitor="memorization/loss_gap")
TRAIN_SECONDS = 100.0  # training between two checks, on the injected clock


class FakeClock:
    """A clock that moves only when told: training and measurements advance it by their modelled cost."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def costed(clock: FakeClock, per_probe: float, light: float, series: list[float] | None = None,
           per_image: float = 0.0, per_label: float = 0.0):
    """The real measurement, advancing ``clock`` by ``light`` plus ``per_probe`` per probe row (``per_label`` when
    the probes are only sampled and labelled) and ``per_image`` per loss-gap image row measured; with ``series``,
    the loss gap of check ``i`` set to ``series[i]`` (a scripted rise)."""
    calls = iter(series or [])

    def measure_fn(model, request: MeasureRequest):
        measured = measure(model, request)
        images = 0 if request.loss_reference is None else request.loss_reference.train.shape[0]
        per_row = (per_label if request.labels_only else per_probe) if request.measure_probes else 0.0
        clock.now += light + per_image * images + per_row * request.noise.shape[0]
        if series is not None:
            measured.loss_gap.heldout.fill_(1.0 + next(calls))
            measured.loss_gap.train.fill_(1.0)
        return measured

    return measure_fn


class TrainingWatch(MemorizationWatch):
    """A watch in a plain loop that trains ``TRAIN_SECONDS`` on its clock before every check but the first."""

    def check(self, model, step: int, **kwargs):
        if step > 0:
            self.clock.now += TRAIN_SECONDS
        return super().check(model, step, **kwargs)


def governed(clock: FakeClock, measure_fn, **kwargs) -> TrainingWatch:
    """The test watch's settings on 8 probes, on ``clock`` and ``measure_fn``."""
    settings = {"every_n_steps": 2, "probes": dataclasses.replace(PROBES, num_samples=8), "sharpness": DENSE}
    return TrainingWatch(**(settings | {"clock": clock, "measure_fn": measure_fn} | kwargs))


def reduced_watch() -> tuple[TrainableGaussian, FakeClock, TrainingWatch]:
    """A watch of the score (no loss gap) on 32 probes, set up: a check costs 0.5 s per probe, 8 at the least."""
    model, clock = TrainableGaussian(), FakeClock()
    w = governed(clock, costed(clock, per_probe=0.5, light=0.0), probes=dataclasses.replace(PROBES, num_samples=32),
                 governor=GovernorConfig(min_fraction=0.25))
    w.setup(model)
    return model, clock, w


def probes_measured(results) -> list[int]:
    return [int(r.scalars[names.PROBES_MEASURED]) for r in results]


def test_the_cuts_halve_the_probes_or_the_loss_images_as_the_shards_allow() -> None:
    config = GovernorConfig(min_fraction=0.25)
    assert CostGovernor(config, 64, 48, 1, light_measures_monitor=False).cuts == [64, 32, 16]
    assert CostGovernor(config, 64, 48, 3, light_measures_monitor=False).cuts == [64, 33, 18]  # 11 and 6 rows a rank
    assert CostGovernor(config, 64, 48, 64, light_measures_monitor=False).cuts == [64]  # one row each already
    assert CostGovernor(GovernorConfig(min_fraction=1.0), 64, 48, 1, light_measures_monitor=False).cuts == [64]
    assert CostGovernor(config, 64, 48, 1, light_measures_monitor=True).cuts == [48, 24, 12]


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"max_overhead": 0.0}, r"max_overhead=0.0 is invalid: expected a fraction of training time in \(0, 1\)"),
    ({"max_overhead": 1.5}, "max_overhead=1.5 is invalid"),
    ({"max_overhead": True}, "max_overhead=True is invalid"),
    ({"min_fraction": 0}, r"min_fraction=0 is invalid: expected a fraction in \(0, 1\]"),
    ({"min_fraction": 1.5}, "min_fraction=1.5 is invalid"),
])
def test_bad_settings_say_what_to_change(kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        GovernorConfig(**kwargs)
    with pytest.raises(ValueError, match=r"governor=0.05 is invalid"):
        MemorizationWatch(governor=0.05)


def test_the_baseline_is_light_and_a_full_check_waits_until_its_predicted_cost_fits_the_target() -> None:
    """Costs as the governor counts network passes (a loss-gap image 0.2 s, a probe ``probe_cost`` images): the
    baseline is the loss gap alone, a full check (32 probes: 6.48 s, more than 5% of one interval) comes whenever
    the running overhead leaves room for its predicted cost, and the overhead stays under the target at every
    check."""
    model, train, heldout = memorized_mixture()
    clock, per_image = FakeClock(), 0.2
    cost = predicted_probe_cost(32, PROBES.num_sampling_steps, 1, DENSE.products_per_sample(4), 0, NUM_LEVELS)
    w = governed(clock, costed(clock, per_probe=per_image * cost, light=0.0, per_image=per_image), stop=LOSS_MONITOR,
                 probes=dataclasses.replace(PROBES, num_samples=32))
    w.setup(model, train_data=train, heldout_data=heldout)
    assert w.governor.probe_cost == pytest.approx(cost) == pytest.approx((5 + 1 + 2 * 4) / 20)  # S + L (1 + 2P)
    full_seconds = per_image * (10 + cost * 32)
    results = [w.check(model, step) for step in range(0, 40, 2)]
    measured = probes_measured(results)
    assert measured[:5] == [0, 0, 0, 32, 32] and set(measured) == {0, 32}  # 2 + 6.48 > 5, 4 + 6.48 > 10, 12.48 <= 15
    assert all(r.scalars[names.OVERHEAD] <= 0.05 for r in results[1:])
    fulls = measured.count(32)
    assert results[-1].scalars[names.OVERHEAD] == pytest.approx(
        (fulls * full_seconds + (20 - fulls) * 10 * per_image) / (19 * TRAIN_SECONDS))
    assert all(r.scalars["loss_gap"] == results[0].scalars["loss_gap"] for r in results)  # the monitor, every check
    assert "light (loss gap only)" in results[1].message and f"overhead {4 / TRAIN_SECONDS:.1%}" in results[1].message


def test_a_full_check_dearer_than_predicted_is_paid_back_before_the_next_one() -> None:
    """A full check costs 20 s where its passes predict 2.6 s (light checks 1 s, 100 s of training between checks,
    target 5%): the first full check comes at the second check and overshoots the target once; from then on the
    timed cost decides, and a full check comes only when the running overhead leaves room for it."""
    model, train, heldout = memorized_mixture()
    clock = FakeClock()
    w = governed(clock, costed(clock, per_probe=19 / 8, light=1.0), stop=LOSS_MONITOR)
    w.setup(model, train_data=train, heldout_data=heldout)
    results = [w.check(model, step) for step in range(0, 60, 2)]
    measured = probes_measured(results)
    assert measured[:2] == [0, 8] and set(measured) == {8, 0}
    fulls = [i for i, m in enumerate(measured) if m == 8]
    assert fulls[1] > 5 and len(fulls) >= 3  # the first full check's 20 s are paid back before the next one
    assert names.OVERHEAD not in results[0].scalars  # no training yet to compare with
    overheads = [math.nan] + [r.scalars[names.OVERHEAD] for r in results[1:]]
    assert overheads[1] == pytest.approx(21 / TRAIN_SECONDS)
    assert all(overhead <= 0.05 for overhead in overheads[fulls[1]:])  # once paid back, always within the target
    assert overheads[-1] == pytest.approx((20 * len(fulls) + 30 - len(fulls)) / (29 * TRAIN_SECONDS))


def test_a_light_check_too_dear_for_one_interval_measures_the_loss_gap_on_fewer_images_from_then_on() -> None:
    """The loss gap of 10 images costs 6 s, more than 5% of 100 s of training: after the light baseline the running
    overhead is above the target, where a check may cost only half of that (2.5 s), so the second check decides to
    cut, and from the next on the loss gap measures 3 images (1.8 s; 5 would cost 3 s), a prefix of the same fixed
    set, at light and full checks alike."""
    model, train, heldout = memorized_mixture()
    clock = FakeClock()
    w = governed(clock, costed(clock, per_probe=1.0, light=0.0, per_image=0.6), stop=LOSS_MONITOR)
    w.setup(model, train_data=train, heldout_data=heldout)
    assert w.governor.cuts == [10, 5, 3]
    results = [w.check(model, step) for step in range(0, 200, 2)]
    images = [int(r.scalars[names.LOSS_GAP_IMAGES_MEASURED]) for r in results]
    assert images[:3] == [10, 10, 3] and set(images[2:]) == {3}
    assert 8 in probes_measured(results[3:])  # full checks still come, on the same 3 images
    noise = loss_noise(10, (4,), NUM_LEVELS, PROBES.seed)[:3]  # the first 3 of the 10 images, and their noise
    expected = loss_gap(model, train[sample_rows(3, 3, PROBES.seed)], heldout[sample_rows(10, 3, PROBES.seed + 1)],
                        noise=noise).summary()
    assert {k: results[2].scalars[k] for k in names.LOSS_REFERENCE} == pytest.approx(expected, rel=1e-6)
    assert "light (loss gap only), next checks' loss gap on 3 images" in results[1].message
    assert "light (loss gap only), loss gap on 3/10 images" in results[2].message
    # the same weights throughout: 3 images give a larger gap than 10 (the memorized image weighs more), by more than
    # min_delta, yet the rule never fires: its best value moved with the cut
    assert results[2].scalars["loss_gap"] - results[1].scalars["loss_gap"] > w.rule.min_delta
    assert not any(r.fired for r in results) and w.rule.best == pytest.approx(results[2].scalars["loss_gap"])


def test_light_checks_within_one_intervals_share_are_cut_while_the_baseline_keeps_the_overhead_above_it() -> None:
    """The loss gap of 10 images costs 4.8 s, within 5% of one 100 s interval, but after the light baseline a second
    one would make 9.6 s over 100 s: that check decides the cut (to 5 images, 2.4 s, within half the share), and the
    running overhead comes back under the target and stays there (full checks cost what their passes predict)."""
    model, train, heldout = memorized_mixture()
    clock, per_image = FakeClock(), 0.48
    cost = predicted_probe_cost(8, PROBES.num_sampling_steps, 1, DENSE.products_per_sample(4), 0, NUM_LEVELS)
    w = governed(clock, costed(clock, per_probe=per_image * cost, light=0.0, per_image=per_image), stop=LOSS_MONITOR)
    w.setup(model, train_data=train, heldout_data=heldout)
    results = [w.check(model, step) for step in range(0, 40, 2)]
    images = [int(r.scalars[names.LOSS_GAP_IMAGES_MEASURED]) for r in results]
    assert images[:3] == [10, 10, 5] and set(images[2:]) == {5}
    assert 8 in probes_measured(results)
    assert all(r.scalars[names.OVERHEAD] <= 0.05 + 1e-12 for r in results[3:])


def test_ungoverned_every_check_is_full_and_the_share_is_still_logged() -> None:
    model, train, heldout = memorized_mixture()
    clock = FakeClock()
    w = governed(clock, costed(clock, per_probe=19 / 8, light=1.0), stop=LOSS_MONITOR,
                 governor=GovernorConfig(max_overhead=None))
    w.setup(model, train_data=train, heldout_data=heldout)
    results = [w.check(model, step) for step in range(0, 10, 2)]
    assert probes_measured(results) == [8] * 5
    assert results[-1].scalars[names.OVERHEAD] == pytest.approx(100 / (4 * TRAIN_SECONDS))


def test_without_a_light_monitor_every_check_measures_the_score_on_fewer_probes_and_never_more_again() -> None:
    """The score is the monitor: no light checks; a prefix of the probes, halved until a check fits 5% of one
    training interval (or to min_fraction of them), and the ratchet keeps it there even when the budget would allow
    more."""
    model, _, w = reduced_watch()  # full: 16 s, 8 probes: 4 s
    results = [w.check(model, step) for step in range(0, 40, 2)]
    assert probes_measured(results) == [32, 32] + [8] * 18  # the 2nd check decides the cut, and measures both
    assert all(names.SCORE in r.scalars for r in results)  # the monitored value at every check
    assert "next checks on 8 probes" in results[1].message
    for r in results[2:]:
        assert r.report.samples.shape[0] == 8 and "8/32 probes" in r.message
    w.governor.add_training(10**6)  # room for a full check: the ratchet still keeps 8
    assert w.governor.choose().probes == 8


def test_a_reduced_check_measures_the_first_probes_of_the_full_set() -> None:
    model, _, w = reduced_watch()
    first, _, second = (w.check(model, step) for step in (0, 2, 4))
    ungoverned = watch(probes=dataclasses.replace(PROBES, num_samples=32), governor=GovernorConfig(max_overhead=None))
    ungoverned.setup(model)
    assert second.scalars[names.PROBES_MEASURED] == 8
    assert torch.equal(second.report.samples, first.report.samples[:8])  # the same probes, the same weights
    assert second.scalars["mu_max"] == pytest.approx(first.report.per_sample()["mu_max"][:8].mean().item())
    assert first.scalars["score"] == ungoverned.check(model, 0).scalars["score"]


def test_every_rank_takes_the_same_tier_from_the_slowest_rank_times() -> None:
    """Rank 1 measures three times slower: the reduced inputs are rank 1's on every rank, so the decisions agree and
    equal those of one process whose checks cost what rank 1's did."""
    model, train, heldout = memorized_mixture()
    steps = range(0, 40, 2)

    def make(rank: int) -> MemorizationWatch:
        clock = FakeClock()
        return governed(clock, costed(clock, per_probe=(1 + 2 * rank) * 2.0, light=1.0), stop=LOSS_MONITOR)

    ranks = run_ranks(2, make, steps=steps, model=model, train_data=train, heldout_data=heldout)
    assert probes_measured(ranks[0]) == probes_measured(ranks[1])
    assert set(probes_measured(ranks[0])) == {8, 0}
    assert [r.scalars[names.OVERHEAD] for r in ranks[0][1:]] == [r.scalars[names.OVERHEAD] for r in ranks[1][1:]]
    clock = FakeClock()  # one process, 8 rows, a full check costing rank 1's 1 + 4 x 6 s
    single = governed(clock, costed(clock, per_probe=3.0, light=1.0), stop=LOSS_MONITOR)
    single.setup(model, train_data=train, heldout_data=heldout)
    alone = [single.check(model, step) for step in steps]
    assert probes_measured(alone) == probes_measured(ranks[0])
    assert [r.scalars[names.OVERHEAD] for r in alone[1:]] == pytest.approx([r.scalars[names.OVERHEAD]
                                                                             for r in ranks[0][1:]])


def test_the_decisions_survive_a_resume() -> None:
    """Saved after the 7th check and loaded into a fresh watch (before its setup, as a restored checkpoint may
    come), the governor continues as if never stopped."""
    model, train, heldout = memorized_mixture()

    def fresh() -> TrainingWatch:
        clock = FakeClock()
        return governed(clock, costed(clock, per_probe=19 / 8, light=1.0), stop=LOSS_MONITOR)

    w = fresh()
    w.setup(model, train_data=train, heldout_data=heldout)
    uninterrupted = probes_measured([w.check(model, step) for step in range(0, 60, 2)])
    first = fresh()
    first.setup(model, train_data=train, heldout_data=heldout)
    before = probes_measured([first.check(model, step) for step in range(0, 14, 2)])
    saved = first.state_dict()
    assert saved["governor"] == first.governor.state_dict() and saved["governor"]["costs"] == {"8/10": 20.0,
                                                                                               "0/10": 1.0}
    resumed = fresh()
    resumed.load_state_dict(saved)
    resumed.setup(model, train_data=train, heldout_data=heldout)
    after = probes_measured([resumed.check(model, step) for step in range(14, 60, 2)])
    assert before + after == uninterrupted and 0 in before and 8 in after


def test_the_stop_on_a_loss_gap_monitor_comes_at_the_same_check_governed_or_not() -> None:
    """A rising loss gap: light checks measure it, so the governed watch fires at the very check the ungoverned one
    does, though most of its checks skipped the probes."""
    model, train, heldout = memorized_mixture()
    series = [0.0] * 12 + [1.0] * 8  # the monitored value (a relative gap: 0, then 0.5) jumps at the 13th check
    runs = {}
    for target in (None, 0.05):
        clock = FakeClock()
        w = governed(clock, costed(clock, 19 / 8, 1.0, series), stop=LOSS_MONITOR,
                     governor=GovernorConfig(max_overhead=target))
        w.setup(model, train_data=train, heldout_data=heldout)
        for step in range(0, 40, 2):
            if w.check(model, step).stop:
                break
        runs[target] = w
    assert runs[None].stopped_step == runs[0.05].stopped_step == 24
    assert [row[names.PROBES_MEASURED] for row in runs[0.05].history].count(0) >= 10


def test_the_baseline_and_checks_outside_training_measure_every_probe_and_stay_out_of_the_accounts() -> None:
    model, clock, w = reduced_watch()
    clock.now += 1000.0  # whatever came between setup and the first check: not training
    assert w.check(model, 0).scalars[names.PROBES_MEASURED] == 32
    accounts = w.governor.state_dict()
    outside = w.check(model, 1, can_stop=False)  # after 100 s of training
    assert outside.scalars[names.PROBES_MEASURED] == 32 and w.governor.state_dict() == accounts
    # 200 s of training since the baseline, which is still being paid back (16 s > 5% of 200 s): a check may cost
    # 2.5% of an interval, 5 s, so the next ones measure 8 probes (4 s)
    assert w.check(model, 2).scalars[names.PROBES_MEASURED] == 32 and w.governor.ceiling == 8
    assert w.governor.train_seconds == 2 * TRAIN_SECONDS  # the outside check's 16 s are neither
    assert w.governor.check_seconds == 16.0 + 16.0


def test_a_loss_gap_baseline_measures_every_probe_when_a_full_check_cannot_be_predicted() -> None:
    """The power solver's products are not counted ahead (nor a solver run to ``tol``): the first check is full,
    and its timed cost decides the next ones, as without a prediction."""
    model, train, heldout = memorized_mixture()
    clock = FakeClock()
    w = governed(clock, costed(clock, per_probe=1.0, light=1.0), stop=LOSS_MONITOR,
                 sharpness=dataclasses.replace(DENSE, solver="power"))
    w.setup(model, train_data=train, heldout_data=heldout)
    assert w.governor.probe_cost is None
    assert probes_measured([w.check(model, 0), w.check(model, 2)]) == [8, 0]  # 9 s paid back first


def test_with_the_probes_cut_the_loss_gap_is_cut_alike() -> None:
    """The score is the monitor: the loss gap (logged, not monitored) loses as many halvings as the probes."""
    governor = CostGovernor(GovernorConfig(), 64, 48, 1, light_measures_monitor=False)
    governor.record(governor.full, 64.0)  # 1 s a probe
    governor.add_training(1000.0)  # 6.4% so far: a check may cost half of 5% of 1000 s while it is paid back
    tier = governor.choose()
    assert (tier.probes, tier.images, tier.cut_probes, tier.cut_images) == (64, 48, 16, 12)
    governor.record(tier, 64.0)
    assert governor.light() == Tier(0, 12) and governor.choose() == Tier(16, 12)


def test_a_resume_under_another_monitor_keeps_the_sums_and_starts_the_cut_afresh() -> None:
    cutting_probes = CostGovernor(GovernorConfig(), 64, 64, 1, light_measures_monitor=False)
    cutting_probes.add_training(100.0)
    cutting_probes.record(Tier(64, 64, cut_probes=16, cut_images=16), 10.0)
    assert cutting_probes.ceiling == 16
    cutting_images = CostGovernor(GovernorConfig(), 64, 32, 1, light_measures_monitor=True)
    cutting_images.load_state_dict(cutting_probes.state_dict())
    assert (cutting_images.train_seconds, cutting_images.check_seconds) == (100.0, 10.0)
    assert cutting_images.ceiling == 32 and cutting_images.costs == {}
    # the same cuts in another mode: a loss-gap run's image ratchet is no ceiling of labelled probes
    loss_gap = CostGovernor(GovernorConfig(), 64, 64, 1, light_measures_monitor=True)
    loss_gap.add_training(100.0)
    loss_gap.record(Tier(0, 64, cut_images=16), 4.0)
    labels = CostGovernor(GovernorConfig(), 64, 64, 1, light_measures_monitor=False, labels_monitor=True)
    assert labels.cuts == loss_gap.cuts and loss_gap.ceiling == 16
    labels.load_state_dict(loss_gap.state_dict())
    assert labels.check_seconds == 4.0 and labels.ceiling == 64 and labels.costs == {}
    older = {k: v for k, v in loss_gap.state_dict().items() if k != "mode"}  # a checkpoint from before the mode
    for governor, kept in ((CostGovernor(GovernorConfig(), 64, 64, 1, light_measures_monitor=True), 16),
                           (CostGovernor(GovernorConfig(), 64, 64, 1, False, labels_monitor=True), 64)):
        governor.load_state_dict(older)
        assert governor.ceiling == kept


def test_with_the_copy_rate_monitor_light_checks_label_the_probes_and_a_full_check_waits_for_room() -> None:
    """Training images only (the copy rate is the monitor): the baseline and the light checks sample and label every
    probe (0.25 s each, 2 s a check) without measuring their sharpness; a full check (predicted from the light
    checks' cost and the passes of the two, 5.6 s) comes whenever the running overhead leaves room for it; the
    copy rate is measured at every check and the overhead stays under the target."""
    model, train, _ = memorized_mixture()
    clock, per_label = FakeClock(), 0.25
    cost = predicted_labels_cost(8, PROBES.num_sampling_steps, 1, DENSE.products_per_sample(4), 0)
    assert cost == pytest.approx((5 + 1 + 2 * 4) / 5)  # (S + L (1 + 2P)) / S
    w = governed(clock, costed(clock, per_probe=per_label * cost, light=0.0, per_label=per_label))
    w.setup(model, train_data=train)
    assert w.monitor == "memorization/nn_rate_lower" and w.governor.probe_cost == pytest.approx(cost)
    results = [w.check(model, step) for step in range(0, 60, 2)]
    full = [not math.isnan(r.scalars[names.SCORE]) for r in results]
    assert full[:3] == [False, False, True]  # 2 + 5.6 s > 5% of 100 s, 4 + 5.6 s <= 5% of 200 s
    assert probes_measured(results) == [8] * 30  # every check samples and labels all 8
    assert all(math.isfinite(r.scalars[names.NN_RATE_LOWER]) for r in results)
    assert all(r.scalars[names.OVERHEAD] <= 0.05 for r in results[1:])
    assert "light (probes labelled, no sharpness)" in results[1].message and "score" not in results[1].message
    labelled = results[1].report
    copy_rate = labelled.labels.copied.double().mean().item()
    assert labelled.stats == {} and results[1].scalars[names.FLAGGED_FRACTION] == pytest.approx(copy_rate)  # copy rule


def test_the_stop_on_the_copy_rate_comes_at_the_same_check_governed_or_not() -> None:
    """No probe copies until the model memorizes at the 8th check: light checks label every probe, so the governed
    watch fires at the very check the ungoverned one does."""
    model, train, _ = memorized_mixture()
    far = IsotropicMixtureModel(torch.full((1, 4), -3.0), torch.ones(1), torch.ones(1), model.schedule)  # no copies
    stops = {}
    for target in (None, 0.05):
        clock = FakeClock()
        w = governed(clock, costed(clock, per_probe=0.5, light=0.0, per_label=0.05), governor=GovernorConfig(
            max_overhead=target), probes=dataclasses.replace(PROBES, num_samples=32))
        w.setup(model, train_data=train)
        for step in range(0, 40, 2):
            result = w.check(far if step < 14 else model, step)
            assert result.scalars[names.PROBES_MEASURED] == 32
            if result.stop:
                break
        stops[target] = w.stopped_step
        labelled_only = [math.isnan(row[names.SCORE]) for row in w.history]
        assert (labelled_only.count(True) >= 4) if target else not any(labelled_only)
    assert stops[None] == stops[0.05] == 14


def test_a_cut_of_the_labelled_probes_states_what_the_copy_rate_stop_loses() -> None:
    """32 probes labelled at 0.25 s each (8 s a check) against 100 s of training: the governor cuts them to the floor
    of 8 (16 would cost 4 s, over half of 5% while the baseline is paid back), and the cut warns once with the rule's
    power at a 10% copy rate on the new count against the old (copy_rate_power: 0.19 on 8, 0.84 on 32)."""
    model, train, _ = memorized_mixture()
    clock = FakeClock()
    w = governed(clock, costed(clock, per_probe=1.0, light=0.0, per_label=0.25),
                 probes=dataclasses.replace(PROBES, num_samples=32))
    w.setup(model, train_data=train)
    with pytest.warns(UserWarning) as caught:
        results = [w.check(model, step) for step in range(0, 12, 2)]
    stated = [str(warning.message) for warning in caught if "the checks of the copy rate label" in str(warning.message)]
    powers = {n: copy_rate_power(0.1, n, 0.01) for n in (32, 16, 8)}
    assert [round(p, 2) for p in powers.values()] == [0.84, 0.49, 0.19]
    assert len(stated) == 1 and "label 8 of the 32 probes from now on" in stated[0]
    assert f"probability {powers[8]:.2f} at a check ({powers[32]:.2f} with 32)" in stated[0]
    assert probes_measured(results)[-1] == 8
    model, _, score = reduced_watch()  # the score's checks cut alike: no copy-rate stop to speak of
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert probes_measured([score.check(model, step) for step in range(0, 12, 2)])[-1] == 8


def test_labels_only_checks_too_dear_for_one_interval_are_cut_and_their_tier_survives_a_resume() -> None:
    governor = CostGovernor(GovernorConfig(), 64, 0, 1, light_measures_monitor=False, probe_cost=3.0,
                            labels_monitor=True)
    first = governor.first()
    assert first == Tier(64, 0, labels_only=True) and first.key == "64/0/labels"
    governor.record(first, 16.0)  # 0.25 s a labelled probe
    governor.add_training(100.0)  # 16% so far: a check may cost half of 5 s while it is paid back
    tier = governor.choose()
    assert (tier.probes, tier.cut_probes, tier.labels_only) == (64, 16, True)  # 16 probes: 4 s > 2.5 s, the floor
    governor.record(tier, 16.0)
    assert governor.choose() == Tier(16, 0, labels_only=True)
    assert governor.estimate(Tier(16, 0)) == pytest.approx(0.25 * 3.0 * 16)  # a full check, from the labelled ones
    resumed = CostGovernor(GovernorConfig(), 64, 0, 1, light_measures_monitor=False, probe_cost=3.0,
                           labels_monitor=True)
    resumed.load_state_dict(governor.state_dict())
    assert resumed.choose() == governor.choose() and resumed.costs == {"64/0/labels": 16.0}
    with pytest.raises(ValueError, match="either a loss-gap key"):
        CostGovernor(GovernorConfig(), 64, 8, 1, light_measures_monitor=True, labels_monitor=True)
