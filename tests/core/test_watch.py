"""The framework-free monitoring core in a plain loop: schedule, reduction over ranks, failures, time budget, the
stop decision and the safe weights, on models with closed-form scores (no Lightning)."""

from __future__ import annotations

import dataclasses
import math
import subprocess
import sys
import threading

import pytest
import torch
from analytic import GaussianModel, IsotropicMixtureModel
from torch import Tensor, nn

from memcallback.core import (
    CALIBRATED_RULES,
    GovernorConfig,
    MeasureRequest,
    MemorizationWatch,
    NoDistribution,
    ProbeConfig,
    StopConfig,
    measure,
    sample_rows,
)
from memcallback.diffusion import NoiseSchedule
from memcallback.measure import analyze, loss_gap, names, sharpness_gap
from memcallback.measure.analysis import probe_noise
from memcallback.measure.copy_flag import copy_flag
from memcallback.measure.ground_truth import COPY_RATIO
from memcallback.measure.null import conformal_threshold
from memcallback.measure.reference import noised_image_stats
from memcallback.measure.sharpness import SharpnessConfig

SCORE = "memorization/score"  # the rules of these tests watch the score, whatever the data

DENSE = SharpnessConfig(k=2, solver="dense")
PROBES = ProbeConfig(num_samples=8, num_sampling_steps=5, sigmas=(0.1,))


class TrainableGaussian(nn.Module):
    """A Gaussian model's exact noise prediction times a trainable ``scale`` (1: exact)."""

    def __init__(self, d: int = 4) -> None:
        super().__init__()
        cov = torch.diag(torch.linspace(1.0, 0.01, d))
        self.base = GaussianModel(torch.zeros(d), cov, NoiseSchedule.linear(100))
        self.schedule, self.prediction_type, self.data_shape = self.base.schedule, "epsilon", self.base.data_shape
        self.scale = nn.Parameter(torch.ones((), dtype=torch.float64))

    def model_output(self, x_t: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        return (self.scale * self.base.model_output(x_t.double(), t)).to(x_t.dtype)


def scripted(series: list[float | None]):
    """A measurement function: the real one, with the memorization score of check ``i`` set to ``series[i]``."""
    calls = iter(series)

    def measure_fn(model, request: MeasureRequest):
        measured = measure(model, request)
        value = next(calls)
        if value is not None:
            measured.report.primary.memorization_score.fill_(value)
        return measured

    return measure_fn


def watch(**kwargs) -> MemorizationWatch:
    """A watch on the test's probes, ungoverned: every check measures everything (the cost governor, which reads the
    wall clock, is tested on an injected one in test_governor.py)."""
    settings = {"every_n_steps": 2, "probes": PROBES, "sharpness": DENSE, "governor": GovernorConfig(max_overhead=None)}
    return MemorizationWatch(**(settings | kwargs))


def test_schedule() -> None:
    w = watch(every_n_steps=3, check_at_start=False)
    assert [s for s in range(10) if w.due(s)] == [3, 6, 9]
    w = watch(every_n_steps=3)
    assert w.due(0)  # the baseline
    w.last_step = 3  # checked already at this step (e.g. resumed from a checkpoint written after it)
    assert [s for s in range(7) if w.due(s)] == [6]  # no second "baseline" at step 0 after a resume
    epochs = watch(every_n_steps=None, every_n_epochs=2)
    assert [e for e in range(6) if epochs.due_at_epoch_end(e, step=10 * e + 10)] == [1, 3, 5]
    assert not epochs.due(4)


def test_a_check_in_a_plain_loop_equals_analyze() -> None:
    """One process: the reduced values are analyze's own summary of the same probes, key for key."""
    model = TrainableGaussian()
    w = watch()
    w.setup(model)
    result = w.check(model, step=0)
    expected = analyze(model, noise=probe_noise(8, (4,), seed=0), sigmas=(0.1,), num_sampling_steps=5,
                       config=DENSE).summary()
    assert set(result.scalars) == names.check_keys(w.setup_state.timesteps, False, None)
    assert {k: v for k, v in result.scalars.items()
            if k not in ("seconds", "partial", "check_failures", "probes_measured")} == {
        k: v for k, v in expected.items() if k != "seconds"} | {"flag_threshold": DENSE.flag_threshold}
    assert (result.scalars["partial"], result.scalars["check_failures"]) == (0.0, 0.0)
    assert result.metrics()["memorization/score"] == result.scalars["score"]
    assert result.safe and not result.fired and w.safe_step == 0 and w.history[0]["step"] == 0.0


class ThreadReducer:
    """In-process collectives for ranks run as threads: each call waits for every rank, then returns the sum."""

    def __init__(self, world_size: int) -> None:
        self.barrier = threading.Barrier(world_size)
        self.slots: list[object] = [None] * world_size
        self.world_size = world_size

    def for_rank(self, rank: int) -> object:
        parent = self

        class RankReducer:
            def all_reduce_sum(self, tensor: Tensor) -> Tensor:
                parent.slots[rank] = tensor.clone()
                parent.barrier.wait()
                total = sum(parent.slots[1:], parent.slots[0].clone())
                parent.barrier.wait()
                return total

            def all_true(self, flag: bool) -> bool:
                return int(self.all_reduce_sum(torch.tensor(int(flag)))) == parent.world_size

            def any_true(self, flag: bool) -> bool:
                return int(self.all_reduce_sum(torch.tensor(int(flag)))) > 0

        return RankReducer()


def run_ranks(world_size: int, make_watch, steps=(0,), model=None, **data: Tensor) -> list[list]:
    """Run ``make_watch(rank)`` on every rank (threads) for the given check steps; each rank's results. ``data``:
    ``train_data`` / ``heldout_data`` for ``setup``."""
    reducer, results, errors = ThreadReducer(world_size), [[] for _ in range(world_size)], []
    model = model or TrainableGaussian()

    def rank_main(rank: int) -> None:
        try:
            w = make_watch(rank)
            w.setup(model, rank=rank, world_size=world_size, reducer=reducer.for_rank(rank), **data)
            results[rank] = [w.check(model, step) for step in steps]
        except Exception as err:  # surfaced below
            errors.append(err)
            reducer.barrier.abort()

    threads = [threading.Thread(target=rank_main, args=(r,)) for r in range(world_size)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    return results


def test_three_ranks_with_padded_shards_reduce_to_the_one_process_values() -> None:
    """8 probes over 3 ranks: shards of 3, 3 and 2 + 1 padding probe; gathered in probe order, padding dropped."""
    single = watch()
    model = TrainableGaussian()
    single.setup(model)
    expected = single.check(model, 0).scalars
    ranks = run_ranks(3, lambda rank: watch())
    assert [w[0].report.samples.shape[0] for w in ranks] == [3, 3, 3]  # every rank makes the same calls
    for (result,) in ranks:
        assert result.scalars.keys() == expected.keys()
        for key in expected.keys() - {"seconds", "overhead"}:
            assert result.scalars[key] == pytest.approx(expected[key], rel=1e-6, abs=1e-9), key


def memorized_mixture() -> tuple[IsotropicMixtureModel, Tensor, Tensor]:
    """A density with one memorized training image (a near point mass) in a broad Gaussian; 3 training images
    (the memorized one first) and 10 held-out ones from the broad part."""
    g = torch.Generator().manual_seed(0)
    train = torch.cat([torch.full((1, 4), 2.0), 0.5 * torch.randn(2, 4, generator=g)])
    model = IsotropicMixtureModel(torch.stack([train[0], torch.zeros(4)]), torch.tensor([1e-6, 1.0]),
                                  torch.tensor([0.5, 0.5]), NoiseSchedule.linear(100))
    return model, train, 0.5 * torch.randn(10, 4, generator=g)


def test_the_sharpness_gap_is_measured_on_seeded_random_training_and_heldout_images() -> None:
    model, train, heldout = memorized_mixture()
    w = watch(probes=ProbeConfig(num_samples=8, num_sampling_steps=5, sigmas=(0.1,), reference_images=5))
    w.setup(model, train_data=train, heldout_data=heldout)
    result = w.check(model, 0)
    t = w.setup_state.timesteps[0]
    rows = sample_rows(3, 5, PROBES.seed)
    assert rows.tolist().count(0) == 2  # the memorized image is one of the first 2 of the cycled random order
    expected = sharpness_gap(model, train[rows], heldout[sample_rows(10, 5, PROBES.seed + 1)], t, DENSE,
                             seed=PROBES.seed).summary()
    assert {k: result.scalars[k] for k in names.REFERENCE} == pytest.approx(expected, rel=1e-6)
    assert result.scalars["sharpness_gap"] > 0.3  # 2 of the 5 training states sit on the memorized image
    assert set(result.scalars) == names.check_keys(w.setup_state.timesteps, True, None, reference=True,
                                                   loss_gap=True)  # both on by default
    assert f"gap {result.scalars['sharpness_gap']:+.3f}" in result.message


def test_three_ranks_reduce_the_sharpness_gap_to_the_one_process_value() -> None:
    """Each image keeps its noise however the images are split: two narrow components closer than the noise, so
    the curvature depends on where the noise puts each state, give the same gap on 1 and 3 processes (another
    noise draw moves the held-out score by 3e-3)."""
    g = torch.Generator().manual_seed(2)
    train, heldout = 0.05 * torch.randn(3, 4, generator=g), 0.05 * torch.randn(10, 4, generator=g)
    model = IsotropicMixtureModel(train[:2], torch.tensor([1e-3, 1e-3]), torch.tensor([0.5, 0.5]),
                                  NoiseSchedule.linear(100))
    probes = ProbeConfig(num_samples=8, num_sampling_steps=5, sigmas=(0.1,), reference_images=7)
    single = watch(probes=probes)
    single.setup(model, train_data=train, heldout_data=heldout)
    expected = single.check(model, 0).scalars
    ranks = run_ranks(3, lambda rank: watch(probes=probes), model=model, train_data=train, heldout_data=heldout)
    for (result,) in ranks:  # 7 reference images: shards of 3, 2 + 1 padding, 2 + 1 padding
        for key in names.REFERENCE:  # float32 sums over batches of 3 instead of 7 states
            assert result.scalars[key] == pytest.approx(expected[key], rel=1e-5, abs=1e-6), key


def test_sample_rows_is_a_seeded_random_order_cycled_over_a_small_set() -> None:
    rows = sample_rows(10, 10, seed=4)
    assert sorted(rows.tolist()) == list(range(10)) and rows.tolist() != list(range(10))
    assert torch.equal(rows, sample_rows(10, 10, seed=4))
    small = sample_rows(3, 7, seed=4)
    assert torch.equal(small[3:6], small[:3]) and sorted(small[:3].tolist()) == [0, 1, 2]


def test_the_loss_gap_is_measured_on_seeded_random_images_with_one_noise_draw() -> None:
    model, train, heldout = memorized_mixture()
    w = watch(probes=ProbeConfig(num_samples=8, num_sampling_steps=5, sigmas=(0.1,), loss_gap_images=6))
    w.setup(model, train_data=train, heldout_data=heldout)
    result = w.check(model, 0)
    expected = loss_gap(model, train[sample_rows(3, 6, PROBES.seed)], heldout[sample_rows(10, 6, PROBES.seed + 1)],
                        seed=PROBES.seed).summary()
    assert {k: result.scalars[k] for k in names.LOSS_REFERENCE} == pytest.approx(expected, rel=1e-6)
    assert result.scalars["loss_gap"] > 0.2  # 2 of the 6 training images are the memorized one
    assert set(result.scalars) == names.check_keys(w.setup_state.timesteps, True, None, loss_gap=True)
    assert f"loss gap {result.scalars['loss_gap']:+.3f}" in result.message


@pytest.mark.parametrize(
    ("images", "keys", "rel"),
    [({"loss_gap_images": 7}, names.LOSS_REFERENCE, 1e-6),  # 7 images: shards of 3, 2 + 1 padding, 2 + 1 padding
     ({"null_images": 100}, ("flag_threshold", "score_null_images", "flagged_fraction"), 1e-9),  # 34, 34, 32 + 2
     ({}, ("flag_ratio", "flag_fpr", "flagged_fraction"), 1e-9)],  # the copy flag: set up alike on every rank
)
def test_three_ranks_reduce_the_reference_images_to_the_one_process_value(images, keys, rel) -> None:
    """The loss gap and the flag's null, their images sharded with padding over 3 ranks, and the copy flag of the
    probes sharded over them: the one-process values."""
    model, train, heldout = memorized_mixture()
    probes = ProbeConfig(num_samples=8, num_sampling_steps=5, sigmas=(0.1,), **images)
    single = watch(probes=probes)
    single.setup(model, train_data=train, heldout_data=heldout)
    expected = single.check(model, 0).scalars
    for (result,) in run_ranks(3, lambda rank: watch(probes=probes), model=model, train_data=train,
                               heldout_data=heldout):
        for key in keys:
            assert result.scalars[key] == pytest.approx(expected[key], rel=rel), key


def test_light_checks_between_full_ones_measure_the_loss_gap_only() -> None:
    model, train, heldout = memorized_mixture()
    w = watch(probes=ProbeConfig(num_samples=8, num_sampling_steps=5, sigmas=(0.1,), every_n_checks=3),
              stop=StopConfig(monitor="memorization/score"))
    w.setup(model, train_data=train, heldout_data=heldout)
    results = [w.check(model, step) for step in range(6)]
    assert [r.report is not None for r in results] == [True, False, False, True, False, False]
    light = results[1]
    assert set(light.scalars) == {*names.LOSS_REFERENCE, names.SECONDS, names.PARTIAL, names.CHECK_FAILURES,
                                  names.OVERHEAD, names.PROBES_MEASURED, names.LOSS_GAP_IMAGES_MEASURED}
    assert light.scalars[names.PROBES_MEASURED] == 0.0 and results[0].scalars[names.PROBES_MEASURED] == 8.0
    assert light.scalars["loss_gap"] == results[0].scalars["loss_gap"]  # same model, images and noise
    assert light.message.startswith("[memorization] step 1 | light (loss gap only) | loss gap ")
    assert [r.safe for r in results] == [True, False, False, True, False, False]  # the score's rule, full checks
    assert w.check(model, 6, can_stop=False).report is not None  # outside training: always full, not counted
    state = w.state_dict()
    state["history"], state["num_checks"] = state["history"][:5], 5  # as if saved after the 5th training check
    for saved in (state, {k: v for k, v in state.items() if k != "num_checks"}):  # the count, or older checkpoints
        resumed = watch(probes=w.probes, stop=w.stop)
        resumed.setup(model, train_data=train, heldout_data=heldout)
        resumed.load_state_dict(saved)
        assert [resumed.check(model, step).report is not None for step in (7, 8)] == [False, True]


def test_the_loss_gap_survives_a_check_cut_short_by_the_time_budget() -> None:
    model, train, heldout = memorized_mixture()
    ticks = iter(range(0, 10**6, 1000))
    w = watch(probes=ProbeConfig(num_samples=8, num_sampling_steps=5, sigmas=(0.1,)), time_budget_s=1.0,
              clock=lambda: float(next(ticks)), stop=StopConfig(monitor="memorization/loss_gap"))
    w.setup(model, train_data=train, heldout_data=heldout)
    result = w.check(model, 0)
    assert result.partial and math.isnan(result.scalars["score"])
    assert math.isfinite(result.scalars["loss_gap"]) and result.safe  # measured first, never cut short


def test_a_loss_gap_monitor_is_decided_at_every_check_light_or_full() -> None:
    model, train, heldout = memorized_mixture()
    w = watch(probes=ProbeConfig(num_samples=8, num_sampling_steps=5, sigmas=(0.1,), every_n_checks=2),
              stop=StopConfig(monitor="memorization/loss_gap"))
    w.setup(model, train_data=train, heldout_data=heldout)
    assert all(w.check(model, step).safe for step in range(4))


def test_with_a_copy_rate_monitor_the_checks_between_label_the_probes() -> None:
    """every_n_checks=2 without held-out data, stopping on the copy rate (the default then): the checks between
    sample and label the probes without their sharpness, so the stop rule decides at every check."""
    model, train, _ = memorized_mixture()
    w = watch(probes=dataclasses.replace(PROBES, num_samples=32, every_n_checks=2))
    w.setup(model, train_data=train)
    assert w.monitor == "memorization/nn_rate_lower"
    results = [w.check(model, step) for step in range(4)]
    light = results[1].scalars
    assert [math.isnan(r.scalars["score"]) for r in results] == [False, True, False, True]
    assert light[names.PROBES_MEASURED] == 32 and light["nn_rate"] == results[0].scalars["nn_rate"]
    assert light["nn_rate"] > 0 and all(r.safe for r in results)  # the monitor measured at every check
    assert results[1].message.startswith("[memorization] step 1 | light (probes labelled, no sharpness)")


def test_a_labels_only_check_keeps_the_warm_start_of_the_full_checks() -> None:
    """The Krylov solver's warm start (the last full check's Ritz vectors) survives a labels-only check between
    two full ones, which measures no level."""
    model, train, _ = memorized_mixture()
    requests: list[MeasureRequest] = []

    def recording(model, request: MeasureRequest):
        requests.append(request)
        return measure(model, request)

    w = watch(probes=dataclasses.replace(PROBES, every_n_checks=2), measure_fn=recording,
              sharpness=SharpnessConfig(k=2, solver="lanczos", krylov_steps=3))
    w.setup(model, train_data=train)
    for step in range(3):
        w.check(model, step)
    assert [r.labels_only for r in requests] == [False, True, False]
    assert requests[0].warm_start is None and w.state_dict()["warm_start"] is not None
    before, after = requests[1].warm_start, requests[2].warm_start  # the state before and after the labels
    assert before and after.keys() == before.keys() and all(torch.equal(after[t], before[t]) for t in before)


def test_light_checks_need_the_loss_gap_and_a_measurement_that_skips_the_probes() -> None:
    model, train, heldout = memorized_mixture()
    probes = ProbeConfig(num_samples=8, num_sampling_steps=5, sigmas=(0.1,), every_n_checks=2)
    with pytest.raises(ValueError, match=r"every_n_checks=2 measures the loss gap alone .*heldout_data\(\)"):
        watch(probes=probes, stop=StopConfig(monitor="memorization/score")).setup(model, train_data=train)

    def probes_always(model, request: MeasureRequest):
        return measure(model, dataclasses.replace(request, measure_probes=True))

    w = watch(probes=probes, measure_fn=probes_always)
    w.setup(model, train_data=train, heldout_data=heldout)
    with pytest.warns(UserWarning, match="measure the probes exactly when asked"):
        results = [w.check(model, step) for step in range(2)]
    assert [r.failed for r in results] == [False, True]


def test_no_gap_without_heldout_data_or_with_its_images_zero() -> None:
    model, train, heldout = memorized_mixture()
    both = {"train_data": train, "heldout_data": heldout}
    small = dict(num_samples=8, num_sampling_steps=5)
    for probes, data, absent in ((ProbeConfig(**small, reference_images=4), {"train_data": train},
                                  names.REFERENCE + names.LOSS_REFERENCE),
                                 (ProbeConfig(**small, reference_images=0), both, names.REFERENCE),
                                 (ProbeConfig(**small, reference_images=4, loss_gap_images=0), both,
                                  names.LOSS_REFERENCE)):
        w = watch(probes=probes)
        w.setup(model, **data)
        scalars = w.check(model, 0).scalars
        assert not set(absent) & set(scalars)
        assert set(names.REFERENCE + names.LOSS_REFERENCE) - set(absent) <= set(scalars)


def test_the_time_budget_cuts_every_rank_at_the_same_point_and_keeps_the_check() -> None:
    """Rank 1's clock runs past the budget; with a fixed call count the interrupt is collective, so every rank
    stops together, and the check is kept as partial (not failed)."""
    ticks = {0: 0.0, 1: 0.0}

    def clock_of(rank: int):
        def clock() -> float:
            ticks[rank] += 1000.0 if rank == 1 else 0.0
            return ticks[rank]

        return clock

    ranks = run_ranks(2, lambda rank: watch(time_budget_s=10.0, clock=clock_of(rank)), steps=(0, 2))
    for results in ranks:
        assert [r.partial and not r.failed for r in results] == [True, True]
        assert [r.scalars["partial"] for r in results] == [1.0, 1.0]
    assert [r.scalars.keys() for r in ranks[0]] == [r.scalars.keys() for r in ranks[1]]


def test_a_failed_check_is_skipped_counted_and_warned_once(recwarn) -> None:
    model = TrainableGaussian()
    calls = iter([None, "oom", "oom"])

    def measure_fn(m, request):
        if next(calls) == "oom":
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return measure(m, request)

    w = watch(measure_fn=measure_fn)
    w.setup(model)
    results = [w.check(model, step) for step in (0, 2, 4)]
    assert [r.failed for r in results] == [False, True, True] and w.failures == 2
    assert results[2].scalars == {"check_failures": 2.0} and results[2].report is None
    assert [h["step"] for h in w.history] == [0.0]
    warned = [str(x.message) for x in recwarn if "failed and was skipped" in str(x.message)]
    assert len(warned) == 1 and "OutOfMemoryError" in warned[0]


class Reporting(NoDistribution):
    """One process that plays what the other ranks said: a failure there, or a fired rule there."""

    def __init__(self, others_failed: bool = False, others_fired: bool = False) -> None:
        self.others_failed, self.others_fired = others_failed, others_fired

    def all_true(self, flag: bool) -> bool:
        return flag and not self.others_failed

    def any_true(self, flag: bool) -> bool:
        return flag or self.others_fired


def test_a_failure_or_a_stop_on_another_rank_is_shared() -> None:
    model = TrainableGaussian()
    w = watch()
    w.setup(model, reducer=Reporting(others_failed=True))
    result = w.check(model, 0)
    assert result.failed and result.error == "it failed on another rank" and not w.history
    w = watch()
    w.setup(model, reducer=Reporting(others_fired=True))
    result = w.check(model, 0)
    assert result.fired and result.stop and w.stopped_step == 0 and not result.safe


def test_a_memorizing_loop_ends_with_the_weights_of_its_last_safe_check() -> None:
    """A plain training loop: the score is quiet at steps 0 and 2 (safe), rises at 4 and 6 (patience 2 fires at 6);
    the model's weights are put back to those of step 2, and ``on_safe`` saw every safe step."""
    model = TrainableGaussian()
    saved: list[int] = []
    stop = StopConfig(monitor=SCORE, threshold=0.3, min_delta=0.05, patience=2, restore_safe_weights=True)
    w = watch(stop=stop, measure_fn=scripted([0.0, 0.1, 0.5, 0.6]), on_safe=saved.append)
    w.setup(model)
    scale_at: dict[int, float] = {}
    for step in range(20):
        if w.due(step):
            scale_at[step] = model.scale.item()
            result = w.check(model, step)
            if result.stop:
                break
        with torch.no_grad():
            model.scale += 0.01  # a training step
    assert (result.step, result.fired, result.restored, w.safe_step, saved) == (6, True, True, 2, [0, 2])
    assert model.scale.item() == scale_at[2] != scale_at[6]
    assert w.safe_weights.step == 2


def test_a_failing_safe_checkpoint_save_warns_once_and_never_ends_the_loop() -> None:
    """``on_safe`` (e.g. writing safe.ckpt to a full disk) raises at every safe check: one warning, the checks go on,
    the safe step still advances and the stop still fires with the weights restored from the host copy."""
    model = TrainableGaussian()

    def disk_full(step: int) -> None:
        raise OSError("No space left on device")

    stop = StopConfig(monitor=SCORE, threshold=0.3, min_delta=0.05, patience=1, restore_safe_weights=True)
    w = watch(stop=stop, measure_fn=scripted([0.0, 0.1, 0.5]), on_safe=disk_full)
    w.setup(model)
    with pytest.warns(UserWarning, match=r"saving the safe checkpoint failed \(OSError: No space left") as record:
        results = [w.check(model, step) for step in (0, 2, 4)]
    assert sum("saving the safe checkpoint" in str(r.message) for r in record) == 1
    assert [(r.safe, r.fired) for r in results] == [(True, False), (True, False), (False, True)]
    assert w.safe_step == 2 and results[-1].restored and results[-1].stop


def test_state_dict_round_trip() -> None:
    model = TrainableGaussian()
    w = watch(measure_fn=scripted([0.0, 0.5]), stop=StopConfig(monitor=SCORE, threshold=0.3, patience=2))
    w.setup(model)
    w.check(model, 0)
    w.check(model, 2)
    resumed = watch()
    resumed.setup(model)
    resumed.load_state_dict(w.state_dict())
    assert (resumed.rule.wait_count, resumed.safe_step, resumed.last_step, resumed.history) == (1, 0, 2, w.history)


def test_setup_errors_name_what_to_change() -> None:
    model = TrainableGaussian()
    lanczos_to_tol = SharpnessConfig(k=2, solver="lanczos", krylov_steps=None)
    with pytest.raises(ValueError, match=r"sharded .* krylov_steps=None"):
        watch(sharpness=lanczos_to_tol).setup(model, sharded=True)
    with pytest.raises(ValueError, match=r"sharded .* jvp='forward'"):
        watch(sharpness=SharpnessConfig(k=2, solver="lanczos")).setup(model, sharded=True)
    watch(sharpness=SharpnessConfig(k=2, solver="lanczos", jvp="forward")).setup(model, sharded=True)  # fine
    with pytest.raises(ValueError, match=r"monitor='memorization/auroc' is not logged"):
        watch(stop=StopConfig(monitor="memorization/auroc", threshold=0.9, min_delta=0.0)).setup(model)
    with pytest.raises(ValueError, match="at least 2 distinct training samples"):
        watch().setup(model, train_data=torch.zeros(1, 4))
    with pytest.raises(ValueError, match=r"sharpness_gap' is not logged .*needs training and held-out data"):
        watch(stop=StopConfig(monitor="memorization/sharpness_gap", threshold=0.025, min_delta=0.0)).setup(
            model, train_data=torch.zeros(3, 4))
    with pytest.raises(ValueError, match=r"loss_gap' is not logged .*probes.loss_gap_images > 0"):
        watch(stop=StopConfig(monitor="memorization/loss_gap")).setup(model, train_data=torch.zeros(3, 4))
    with pytest.raises(ValueError, match=r"heldout_data must have shape \[M, \*\(4,\)\]"):
        watch().setup(model, train_data=torch.zeros(3, 4), heldout_data=torch.zeros(3, 5))
    with pytest.raises(ValueError, match=r"monitor='memorization/score' is invalid.*prefix='mem/'"):
        watch(prefix="mem/", stop=StopConfig(monitor=SCORE))
    with pytest.raises(RuntimeError, match="setup"):
        watch().check(model, 0)


def test_the_core_imports_no_framework() -> None:
    code = ("import sys, memcallback.core, memcallback.measure, memcallback.spectral; "
            "bad = [m for m in ('lightning', 'wandb', 'hydra') if m in sys.modules]; assert not bad, bad")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0


def test_partial_values_that_were_not_reached_are_nan_not_missing() -> None:
    """A measurement cut during sampling has no statistics at all; the check still logs every key (NaN)."""
    model = TrainableGaussian()
    ticks = iter(range(1000))
    w = watch(time_budget_s=0.5, clock=lambda: float(next(ticks)))  # every reading 1 s later: over at once
    w.setup(model)
    result = w.check(model, 0)
    assert result.partial and not result.failed and result.report.stats == {}
    assert set(result.scalars) == names.check_keys(w.setup_state.timesteps, False, None)
    assert math.isnan(result.scalars["score"]) and not result.safe  # nothing measured: nothing certified


def test_the_flag_is_calibrated_on_noised_heldout_images_at_every_check() -> None:
    """With held-out data the threshold is the conformal quantile of the scores at ``null_images`` noised held-out
    images (a seeded selection, cycled, with their own noise); probes on the memorized point score above it."""
    model, train, heldout = memorized_mixture()
    probes = ProbeConfig(num_samples=16, num_sampling_steps=5, sigmas=(0.1,), null_images=100)
    w = watch(probes=probes)
    w.setup(model, train_data=train, heldout_data=heldout)
    result = w.check(model, 0)
    t = w.setup_state.timesteps[0]
    images = heldout[sample_rows(10, 100, probes.seed + 2)]
    null = noised_image_stats(model, images, probe_noise(100, (4,), probes.seed + 3), t, DENSE, seed=probes.seed)
    threshold = conformal_threshold(null.memorization_score, DENSE.flag_fpr)
    assert result.scalars["flag_threshold"] == pytest.approx(threshold, rel=1e-9)
    assert result.scalars["score_null_images"] == pytest.approx(null.memorization_score.double().mean().item())
    flagged = result.report.primary.memorization_score > threshold
    assert torch.equal(result.report.primary.flagged, flagged)
    assert result.scalars["flagged_fraction"] == pytest.approx(flagged.double().mean().item())
    copies = result.report.labels.copied
    assert copies.any() and bool(flagged[copies].all())  # every copy of the point mass is flagged
    assert result.scalars["flagged_fraction"] == pytest.approx(result.scalars["nn_rate"])


def test_without_null_images_the_flag_keeps_its_fixed_threshold() -> None:
    """Null images are opt-in (off by default, even with held-out data) and need held-out data."""
    model, train, heldout = memorized_mixture()
    for w, data in ((watch(), {"train_data": train, "heldout_data": heldout}),
                    (watch(probes=dataclasses.replace(PROBES, null_images=100)), {"train_data": train})):
        w.setup(model, **data)
        result = w.check(model, 0)
        assert result.scalars["flag_threshold"] == DENSE.flag_threshold
        assert "score_null_images" not in result.scalars


def test_with_heldout_data_the_flag_is_the_copy_test_at_the_stated_rate() -> None:
    """Training and held-out data: a probe is flagged when its nearest-neighbour distance ratio is below the held-out
    images' conformal quantile at flag_fpr (copy_flag on a seeded selection of them); the copies of the memorized
    image are flagged; the score flag's level stays logged."""
    model, train, _ = memorized_mixture()
    heldout = 0.5 * torch.randn(300, 4, generator=torch.Generator().manual_seed(5))
    w = watch(probes=dataclasses.replace(PROBES, num_samples=16))
    w.setup(model, train_data=train, heldout_data=heldout)
    result = w.check(model, 0)
    flag = copy_flag(heldout[sample_rows(300, 300, PROBES.seed + 4)], train, DENSE.flag_fpr)
    assert (result.scalars["flag_ratio"], result.scalars["flag_fpr"]) == (flag.ratio, DENSE.flag_fpr)
    flagged = flag(result.report.labels.distance_ratio)
    assert torch.equal(result.report.primary.flagged, flagged)
    assert result.scalars["flagged_fraction"] == pytest.approx(flagged.double().mean().item())
    copies = result.report.labels.copied
    assert copies.any() and bool(flagged[copies].all())
    assert result.scalars["flag_threshold"] == DENSE.flag_threshold


def test_few_heldout_images_flag_at_the_rate_they_support_and_say_so() -> None:
    model, train, heldout = memorized_mixture()  # 10 held-out images: 1/11, not 0.01
    w = watch()
    with pytest.warns(UserWarning, match="calibrated on 10 held-out images, too few for sharpness.flag_fpr=0.01"):
        w.setup(model, train_data=train, heldout_data=heldout)
    assert w.check(model, 0).scalars["flag_fpr"] == pytest.approx(1 / 11)


def test_without_a_null_the_flag_is_the_copy_rule_at_no_stated_rate() -> None:
    """Training data without held-out data, or copy_null_images=0: a probe is flagged when it is a copy by the
    ground truth's rule (d1/d2 < 1/3); flag_fpr is NaN, since no rate can be stated."""
    model, train, heldout = memorized_mixture()
    base = dataclasses.replace(PROBES, num_samples=16)
    for probes, data in ((base, {"train_data": train}),
                         (dataclasses.replace(base, copy_null_images=0), {"train_data": train,
                                                                           "heldout_data": heldout})):
        w = watch(probes=probes)
        w.setup(model, **data)
        result = w.check(model, 0)
        copies = result.report.labels.copied
        assert copies.any() and torch.equal(result.report.primary.flagged, copies)
        assert result.scalars["flagged_fraction"] == pytest.approx(copies.double().mean().item())
        assert result.scalars["flag_ratio"] == COPY_RATIO and math.isnan(result.scalars["flag_fpr"])


def test_the_copy_flag_gives_way_to_the_score_flag_when_asked_or_without_training_data() -> None:
    """The opt-in score null, or no training data: no copy flag, the score flag at the primary timestep."""
    model, train, heldout = memorized_mixture()
    for probes, data in ((dataclasses.replace(PROBES, null_images=100), {"train_data": train,
                                                                         "heldout_data": heldout}),
                         (PROBES, {})):
        w = watch(probes=probes)
        w.setup(model, **data)
        result = w.check(model, 0)
        assert "flag_ratio" not in result.scalars and "flag_fpr" not in result.scalars
        primary = result.report.primary
        assert torch.equal(primary.flagged, primary.memorization_score > result.scalars["flag_threshold"])


def test_without_heldout_data_the_default_stop_fires_when_the_probes_start_to_copy() -> None:
    """The same watch, training images only: quiet while no probe copies, fired at the first check where enough of
    them copy that the rate's 95% lower bound passes 1%."""
    model, train, _ = memorized_mixture()  # half the mass on a near point mass at a training image
    far = IsotropicMixtureModel(torch.full((1, 4), -3.0), torch.ones(1), torch.ones(1), model.schedule)  # no copies
    probes = dataclasses.replace(PROBES, num_samples=32)
    w = watch(probes=probes)
    w.setup(model, train_data=train)
    quiet, fired = w.check(far, 0), w.check(model, 2)
    assert quiet.scalars["nn_rate"] == quiet.scalars["nn_rate_lower"] == 0.0 and not quiet.fired
    copies = round(fired.scalars["nn_rate"] * probes.num_samples)
    assert copies >= 2 and fired.scalars["nn_rate_lower"] > 0.01 and fired.fired


def test_the_default_stop_is_the_loss_gap_then_the_copy_rate_then_the_score() -> None:
    """Held-out data: the loss gap; training images only: the probes' copy rate at 95% confidence; neither: the
    score. Each with its calibrated constants."""
    model, train, heldout = memorized_mixture()
    with_heldout, train_only, neither = watch(), watch(), watch()
    with_heldout.setup(model, train_data=train, heldout_data=heldout)
    train_only.setup(model, train_data=train)
    neither.setup(model)
    for w, key in ((with_heldout, "loss_gap"), (train_only, "nn_rate_lower"), (neither, "score")):
        assert (w.monitor, w.rule.threshold, w.rule.min_delta) == (
            f"memorization/{key}", CALIBRATED_RULES[key].threshold, CALIBRATED_RULES[key].min_delta)
    assert with_heldout.stop.monitor == "auto"  # the configured value stays as given (checkpoint state keys)
    named = watch(stop=StopConfig(monitor="memorization/loss_gap", patience=2))
    named.setup(model, train_data=train, heldout_data=heldout)
    assert (named.rule.threshold, named.rule.patience) == (CALIBRATED_RULES["loss_gap"].threshold, 2)
