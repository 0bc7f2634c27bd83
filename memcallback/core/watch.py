"""MemorizationWatch: the framework-free monitoring core that any training loop can call.

    watch = MemorizationWatch(every_n_steps=250, probes=ProbeConfig(num_samples=64))
    watch.setup(model, train_data=unique_train_images)          # rank/world_size/reducer under DDP
    for step in range(num_steps):
        ...                                                     # the training step
        if watch.due(step):
            result = watch.check(model, step)
            log(result.metrics(), step)
            if result.stop:
                break

The Lightning callback (:class:`memcallback.MemorizationMonitor`) is a thin layer over this class.
"""

from __future__ import annotations

import itertools
import math
import time
import warnings
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from memcallback.arguments import is_int, is_real, require
from memcallback.core.calibration import COPY_RATE_TO_CATCH
from memcallback.core.distributed import NoDistribution, Reducer, TorchDistributed, gather_probes, max_over_ranks
from memcallback.core.governor import (
    CostGovernor,
    GovernorConfig,
    Tier,
    local_rows,
    predicted_labels_cost,
    predicted_probe_cost,
)
from memcallback.core.measurement import (
    MeasureFn,
    MeasureRequest,
    NullImages,
    ReferenceImages,
    fixed_call_count,
    is_sharded,
    measure,
)
from memcallback.core.probes import ProbeConfig, ProbeSet, sample_rows, shard
from memcallback.core.result import CheckResult
from memcallback.core.safe import SafeWeights
from memcallback.core.stopping import AUTO, StopConfig, StopRule
from memcallback.core.weights import WEIGHTS, AveragedWeights, full_precision
from memcallback.diffusion import DiffusionModel, check_model
from memcallback.measure import names
from memcallback.measure.analysis import probe_noise, resolve_timesteps
from memcallback.measure.conditional import ConditionalConfig
from memcallback.measure.copy_flag import CopyFlag, copy_flag
from memcallback.measure.ground_truth import copy_rate_power
from memcallback.measure.loss_gap import NUM_LEVELS, LossGap, loss_gap_summary, loss_noise
from memcallback.measure.null import conformal_threshold, min_null_size
from memcallback.measure.reference import SharpnessGap
from memcallback.measure.report import SharpnessReport, summarize
from memcallback.measure.sharpness import SharpnessConfig, SharpnessStats


@dataclass
class _Setup:
    """What :meth:`MemorizationWatch.setup` resolved for one model and process."""

    probes: ProbeSet
    timesteps: list[int]
    train_data: Tensor | None
    reducer: Reducer
    collective_interrupt: bool
    reference: ReferenceImages | None = None  # this rank's share of the sharpness gap's images
    num_reference: int = 0
    loss_reference: ReferenceImages | None = None  # this rank's share of the loss gap's images
    null: NullImages | None = None  # this rank's share of the flag's null images
    num_null: int = 0
    copy_flag: CopyFlag | None = None  # the default per-sample flag (training data given)
    warm_start: dict[int, Tensor] | None = field(default=None)
    averaged: AveragedWeights | None = None  # the model's averaged (EMA) copy, when setup was given one


class MemorizationWatch:
    r"""Watch a diffusion model for memorization in any training loop, and say when to stop.

    At every check it samples a fixed probe set with deterministic DDIM, measures how sharp the learned density
    is around each probe (the Hessian of ``log p_t`` is the Jacobian of the score), reduces the per-probe values
    over processes, feeds the monitored value to a :class:`~memcallback.core.StopRule` and remembers the last
    *safe* check. Training is never perturbed: the measurement uses its own generator and restores train/eval
    flags, grad mode and RNG states.

    **Cost.** The cost governor (:class:`~memcallback.core.GovernorConfig`, on by default at 5%) keeps what the
    checks add to the training wall time under ``governor.max_overhead``: it times each check and the training between
    checks (the maximum over ranks, so every rank decides alike) and picks, check by check, a light check (the loss
    gap alone, when the stop rule monitors a loss-gap key; the probes sampled and labelled without their sharpness,
    when it monitors their copy rate), a reduced check (a prefix of the probes, when the monitor needs them) or a
    full one; see :mod:`memcallback.core.governor`. Every check logs ``overhead`` (check seconds over training
    seconds so far) and ``probes_measured`` (sampled; the sharpness keys are NaN at a labels-only check). Checks
    outside training (``can_stop=False``) measure every probe and stay out of the accounts; the first check does
    too, unless a light check measures the monitor and the governor can predict a full check's cost, when it is
    light (the baseline of the loss gap or of the copy rate).

    **Flag.** With training data at :meth:`setup` a probe is flagged (``flagged_fraction``) when it copies a training
    image by the ground truth's rule (nearest-neighbour distance ratio below 1/3); with held-out data too, only when
    its ratio is also below what all but ``sharpness.flag_fpr`` of the held-out images reach
    (:mod:`~memcallback.measure.copy_flag`, measured once at setup): on a model that generalizes, at most that
    fraction of the probes is flagged (logged as ``flag_fpr``; NaN without held-out data, where no rate can be
    stated). Without training data the flag is the score above ``sharpness.flag_threshold``, a level that does not
    carry over between data sets.

    **Light checks.** Also with ``probes.every_n_checks = n > 1``, only every ``n``-th check (the first included)
    may sample and measure the probes; the checks between measure the loss gap alone and log its keys with
    ``seconds``, ``partial``, ``check_failures``, ``overhead`` and ``probes_measured``, or, when the stop monitors the
    probes' copy rate, also sample and label the probes (no sharpness: its keys are NaN). The stop rule sees a value
    only at checks that measure its monitor.

    **Safe check.** A successful check that measured the monitored value and at which the stop rule did not alarm:
    its monitored value is finite and
    either not past ``threshold`` or not worse than the best value so far by more than ``min_delta``. The
    baseline (first) check is therefore safe. With ``stop.restore_safe_weights`` the model's ``state_dict`` is
    copied to the host at every safe check (one copy, overwritten) and loaded back when the rule fires; with
    ``on_safe`` a user function (e.g. writing a checkpoint) is called at every safe check instead or as well.

    **Which weights.** With ``weights="ema"`` (the default) and an averaged copy given to :meth:`setup` (an EMA),
    a check measures the average, the weights that generate samples, and puts the raw weights back exactly after;
    the safe weights then keep and restore both copies. Every check runs in float32, whatever the training dtype
    (:func:`~memcallback.core.weights.full_precision`).

    **Failures.** A check that raises (out of memory included) or meets non-finite values is skipped on every
    rank, counted in ``check_failures`` and warned about once; it never ends training and never moves the rule.
    **Time budget.** ``time_budget_s`` becomes the measurement's ``interrupt``: a check that overruns it stops at
    the next point where it can return values, is kept, and logs ``partial = 1``.

    **Several processes.** Every method that reduces (``check``) is collective. Each rank measures an equal
    shard of the probes (padded), so every rank makes the same number of network calls when the solver's call
    count is fixed (dense Jacobian, or a Krylov budget ``krylov_steps``); the interrupt is then collective too,
    so all ranks stop at the same point. With a data-dependent call count (Lanczos run to ``tol``) the interrupt
    stays per rank, and sharded models (FSDP), whose forward is itself collective, are refused at :meth:`setup`.

    Args:
        every_n_steps: check at every this many steps (``None``: epochs, see :meth:`due_at_epoch_end`).
        every_n_epochs: check at the end of every this many epochs (exclusive with ``every_n_steps``).
        check_at_start: check at step 0 (the baseline the stop rule compares to).
        probes: the probe set.
        sharpness: solver and score settings.
        stop: the stop rule and what to do when it fires; by default (``monitor="auto"``) the loss gap with
            held-out data, else the probes' copy rate at 95% confidence with training data, else the score
            (:class:`~memcallback.core.StopConfig`).
        conditions: conditional metrics to add (``None``: none).
        time_budget_s: seconds after which a check is cut short and marked partial (``None``: no budget).
        governor: what the checks may add to the training wall time (default: ``GovernorConfig()``, 5%).
        prefix: namespace of every logged key; ``stop.monitor`` must start with it.
        measure_fn: the measurement function (default: :func:`~memcallback.core.measurement.measure`).
        clock: the clock of the time budget and of the cost governor, in seconds.
        on_safe: called with the step of every new safe check (after the weights were copied).
        weights: ``"ema"``: measure the averaged copy given to :meth:`setup` when there is one, else the raw
            weights; ``"raw"``: always the raw weights (see :data:`~memcallback.core.weights.WEIGHTS`).
    """

    def __init__(
        self,
        *,
        every_n_steps: int | None = 250,
        every_n_epochs: int | None = None,
        check_at_start: bool = True,
        probes: ProbeConfig | None = None,
        sharpness: SharpnessConfig | None = None,
        stop: StopConfig | None = None,
        conditions: ConditionalConfig | None = None,
        time_budget_s: float | None = None,
        governor: GovernorConfig | None = None,
        prefix: str = names.PREFIX,
        measure_fn: MeasureFn = measure,
        clock: Callable[[], float] = time.perf_counter,
        on_safe: Callable[[int], None] | None = None,
        weights: str = "ema",
    ) -> None:
        require(isinstance(prefix, str) and bool(prefix), "prefix", prefix, "a non-empty string, e.g. 'memorization/'")
        if (every_n_steps is None) == (every_n_epochs is None):
            raise ValueError("Set exactly one of every_n_train_steps and every_n_epochs (the other to None); got "
                             f"every_n_train_steps={every_n_steps!r}, every_n_epochs={every_n_epochs!r}.")
        for name, value in (("every_n_train_steps", every_n_steps), ("every_n_epochs", every_n_epochs)):
            require(value is None or (is_int(value) and value >= 1), name, value, "an int >= 1")
        require(isinstance(weights, str) and weights in WEIGHTS, "weights", weights, f"one of {WEIGHTS}")
        require(isinstance(check_at_start, bool), "check_on_train_start", check_at_start, "True or False")
        require(time_budget_s is None or (is_real(time_budget_s) and 0 < time_budget_s < math.inf), "time_budget_s",
                time_budget_s, "a positive finite number of seconds or None")
        for name, value, kind in (("probes", probes, ProbeConfig), ("sharpness", sharpness, SharpnessConfig),
                                  ("stop", stop, StopConfig), ("conditions", conditions, ConditionalConfig),
                                  ("governor", governor, GovernorConfig)):
            require(value is None or isinstance(value, kind), name, value, f"a {kind.__name__} or None")
        self.stop = stop or StopConfig()
        monitor = self.stop.monitor
        require(monitor == AUTO or (monitor.startswith(prefix) and monitor != prefix), "monitor", monitor,
                f"'auto' or one of this monitor's keys, which start with prefix={prefix!r} (e.g. "
                f"'{prefix}{names.LOSS_GAP}')")
        resolved = self.stop.resolve(prefix, ())  # final at setup, once it is known what a check logs
        self.every_n_steps, self.every_n_epochs, self.check_at_start = every_n_steps, every_n_epochs, check_at_start
        self.probes, self.sharpness = probes or ProbeConfig(), sharpness or SharpnessConfig()
        fewest = min_null_size(self.sharpness.flag_fpr)
        if 0 < self.probes.null_images < fewest:
            raise ValueError(f"probes.null_images={self.probes.null_images} is too few for sharpness.flag_fpr="
                             f"{self.sharpness.flag_fpr:g}: a conformal flag threshold needs at least {fewest} null "
                             "scores. Raise null_images or flag_fpr, or set null_images=0 (the fixed flag_threshold).")
        self.conditions, self.time_budget_s, self.prefix = conditions, time_budget_s, prefix
        self.governor_config = governor or GovernorConfig()
        self.measure_fn, self.clock, self.on_safe, self.weights = measure_fn, clock, on_safe, weights
        self.rule = StopRule(resolved)
        self.monitor = resolved.monitor  # the logged key the rule watches (``stop.monitor`` resolved)
        self.safe_weights = SafeWeights()
        self.history: list[dict[str, float]] = []
        self.stopped_step: int | None = None
        self.safe_step: int | None = None
        self.failures = 0
        self.num_checks = 0  # training checks begun (failed ones too): every probes.every_n_checks-th one is full
        self.last_step: int | None = None
        self.setup_state: _Setup | None = None
        self.governor: CostGovernor | None = None  # built at setup, for this probe set and monitor
        self._governor_state: dict[str, Any] = {}  # loaded before setup: applied there
        self._since = 0.0  # the clock at the end of the last check (or at setup): training time runs from here
        self._reported: set[str] = set()  # one-time warnings already given
        self._pending_warm_start: dict[int, Tensor] | None = None  # loaded before setup

    @property
    def probe_set(self) -> ProbeSet | None:
        """This rank's probes (after :meth:`setup`)."""
        return None if self.setup_state is None else self.setup_state.probes

    @property
    def train_data(self) -> Tensor | None:
        """The training samples of the ground truth given to :meth:`setup`."""
        return None if self.setup_state is None else self.setup_state.train_data

    @property
    def monitor_key(self) -> str:
        """The monitored key without prefix."""
        return self.monitor.removeprefix(self.prefix)

    # ------------------------------------------------------------------------------------------------------
    def setup(self, model: DiffusionModel, *, train_data: Tensor | None = None, heldout_data: Tensor | None = None,
              rank: int = 0, world_size: int = 1, reducer: Reducer | None = None, sharded: bool | None = None,
              averaged: AveragedWeights | None = None) -> None:
        """Resolve everything that depends on the model and the process; raise a clear error on bad settings.

        Args:
            model: any :class:`~memcallback.DiffusionModel`.
            train_data: ``[N, *data_shape]`` distinct training samples for the nearest-neighbour ground truth
                (``nn_rate``, ``nn_rate_lower``, ``auroc``; without held-out data the default stop watches
                ``nn_rate_lower``) and the sharpness gap, or ``None``.
            heldout_data: ``[M, *data_shape]`` samples never trained on: with ``train_data`` and
                ``probes.reference_images > 0``, ``min(reference_images, M)`` of them and as many training samples
                (each a seeded random selection, training samples cycled when ``N`` is smaller) give the sharpness
                gap (``sharpness_gap``, ``score_train_images``, ``score_heldout_images``); with
                ``probes.loss_gap_images > 0``, as many again the loss gap (``loss_gap``, ``loss_train_images``,
                ``loss_heldout_images``). Only these scalars are logged.
            rank: this process's rank.
            world_size: the number of processes.
            reducer: collective operations (default: none for one process, ``torch.distributed`` otherwise).
            sharded: whether the model's forward is collective (FSDP); ``None``: detected from its parameters.
            averaged: the model's averaged (EMA) copy (:class:`~memcallback.core.weights.AveragedWeights`), measured
                with ``weights="ema"`` and kept with the safe weights; ``None``: none.
        """
        model = check_model(model)
        shape = tuple(model.data_shape)
        timesteps = resolve_timesteps(model, self.probes.sigmas, self.probes.timesteps)
        dim, num_t = math.prod(shape), model.schedule.num_timesteps
        k = self.sharpness.k
        if k > dim:
            raise ValueError(f"k={k} is larger than the data dimension {dim}; choose a smaller k.")
        if self.probes.num_sampling_steps > num_t:
            raise ValueError(f"num_sampling_steps={self.probes.num_sampling_steps} exceeds the model's {num_t} "
                             "timesteps.")
        if self.conditions is not None and getattr(model, "conditional", None) is False:
            raise ValueError(f"conditions={list(self.conditions.labels)} needs a conditional model, but "
                             f"{type(model).__name__}.conditional is False; set conditions=None.")
        fixed = fixed_call_count(self.sharpness, dim)
        sharded = is_sharded(model) if sharded is None else sharded
        if sharded and not fixed:
            raise ValueError(f"The model is sharded (FSDP): every rank must make the same network calls during a "
                             f"check, but solver={self.sharpness.solver!r} with krylov_steps=None stops when its "
                             "tolerance is met, which differs between ranks. Use solver='dense' or a fixed Krylov "
                             "budget (krylov_steps).")
        if sharded and not self.sharpness.use_dense(dim) and self.sharpness.jvp == "double_backward":
            raise ValueError("The model is sharded (FSDP), whose parameters are freed between forward and backward: "
                             "jvp='double_backward' (a backward through a backward) fails there. Use jvp='forward' "
                             "or solver='dense'.")
        if train_data is not None:
            if tuple(train_data.shape[1:]) != shape:
                raise ValueError(f"The training data has sample shape {tuple(train_data.shape[1:])} but the model's "
                                 f"data_shape is {shape}; make them agree.")
            if len(train_data) < 2:
                raise ValueError("The nearest-neighbour ground truth needs at least 2 distinct training samples; "
                                 "pass train_data=None (ground_truth=False).")
        if heldout_data is not None and (heldout_data.dim() != len(shape) + 1 or tuple(heldout_data.shape[1:]) != shape
                                         or len(heldout_data) < 1):
            raise ValueError(f"heldout_data must have shape [M, *{shape}] with M >= 1, got "
                             f"{tuple(heldout_data.shape)}; pass held-out samples of the model's data shape or None.")
        seed = self.probes.seed
        num_reference = num_loss = 0
        reference = loss_reference = None
        if train_data is not None and heldout_data is not None:
            if self.probes.reference_images > 0:
                num_reference = min(self.probes.reference_images, len(heldout_data))
                reference = _reference_share(train_data, heldout_data, probe_noise(num_reference, shape, seed), seed,
                                             rank, world_size)
            if self.probes.loss_gap_images > 0:
                num_loss = min(self.probes.loss_gap_images, len(heldout_data))
                loss_reference = _reference_share(train_data, heldout_data,
                                                  loss_noise(num_loss, shape, NUM_LEVELS, seed), seed, rank, world_size)
        null, num_null = None, 0
        if heldout_data is not None and self.probes.null_images > 0:
            num_null = self.probes.null_images
            images = heldout_data[sample_rows(len(heldout_data), num_null, seed + 2).to(heldout_data.device)]
            null = NullImages(*(shard(x, rank, world_size)  # the noise stays on the CPU, like the probes'
                                for x in (images, probe_noise(num_null, shape, seed + 3))))
        flag = None
        if null is None and train_data is not None:
            flag = (self._copy_flag(train_data, heldout_data)
                    if heldout_data is not None and self.probes.copy_null_images > 0 else CopyFlag.copy_rule())
        num_conditions = None if self.conditions is None else len(self.conditions.labels)
        known = names.check_keys(timesteps, train_data is not None, num_conditions, reference is not None,
                                 loss_reference is not None, null is not None)
        resolved = self.stop.resolve(self.prefix, known)
        self.monitor = resolved.monitor
        if self.monitor_key not in known:
            hint = ""
            if self.monitor_key in names.REFERENCE:
                hint = " (the sharpness gap needs training and held-out data at setup, and probes.reference_images > 0)"
            elif self.monitor_key in names.LOSS_REFERENCE:
                hint = (" (the loss gap needs training and held-out data at setup, with MemorizationMonitor "
                        "ground_truth=True and a datamodule with unique_train_data() and heldout_data(), and "
                        "probes.loss_gap_images > 0)")
            raise ValueError(f"monitor={self.monitor!r} is not logged by this MemorizationMonitor{hint}; choose "
                             f"one of {sorted(self.prefix + name for name in known)}.")
        light_measures_monitor = loss_reference is not None and self.monitor_key in names.LOSS_REFERENCE
        labels_monitor = train_data is not None and self.monitor_key in names.COPY_RATE
        if self.probes.every_n_checks > 1 and loss_reference is None and not labels_monitor:
            raise ValueError(f"probes.every_n_checks={self.probes.every_n_checks} measures the loss gap alone between "
                             "full checks, but there is no loss gap: give training and held-out data at setup (with "
                             "MemorizationMonitor: ground_truth=True and a datamodule with unique_train_data() and "
                             "heldout_data()) and probes.loss_gap_images > 0, or stop on the probes' copy rate "
                             "(training data given: the checks between label the probes), or set every_n_checks=1 "
                             "and check less often instead.")
        self.rule.configure(resolved)
        require(averaged is None or isinstance(averaged, AveragedWeights), "averaged", averaged,
                "an AveragedWeights, e.g. AveragedWeights.from_ema_model(ema_model, unet), or None")
        if reducer is None:
            reducer = NoDistribution() if world_size == 1 else TorchDistributed()
        self.setup_state = _Setup(probes=ProbeSet.build(self.probes, shape, rank, world_size), timesteps=timesteps,
                                  train_data=train_data, reducer=reducer, collective_interrupt=fixed,
                                  reference=reference, num_reference=num_reference, loss_reference=loss_reference,
                                  null=null, num_null=num_null, copy_flag=flag, averaged=averaged,
                                  warm_start=self._pending_warm_start)
        products = self.sharpness.products_per_sample(math.prod(shape))
        probe_cost = None
        if products is not None and self.conditions is None:  # the conditional metrics' cost is not predicted
            counts = (self.probes.num_samples, self.probes.num_sampling_steps, len(timesteps), products,
                      2 * num_reference + num_null)
            probe_cost = predicted_labels_cost(*counts) if labels_monitor else predicted_probe_cost(*counts, NUM_LEVELS)
        self.governor = CostGovernor(self.governor_config, self.probes.num_samples, num_loss, world_size,
                                     light_measures_monitor, probe_cost, labels_monitor=labels_monitor)
        self.governor.load_state_dict(self._governor_state)
        self._since = self.clock()

    def _copy_flag(self, train_data: Tensor, heldout_data: Tensor) -> CopyFlag:
        """The copy flag from at most ``probes.copy_null_images`` held-out images (a seeded random selection), with a
        warning when they are too few for ``sharpness.flag_fpr``."""
        count = min(self.probes.copy_null_images, len(heldout_data))
        images = heldout_data[sample_rows(len(heldout_data), count, self.probes.seed + 4).to(heldout_data.device)]
        fpr = self.sharpness.flag_fpr
        flag = copy_flag(images, train_data.to(images.device), fpr)
        if flag.fpr > fpr:
            warnings.warn(f"The per-sample flag is calibrated on {count} held-out images, too few for "
                          f"sharpness.flag_fpr={fpr:g} (that needs {min_null_size(fpr)}): "
                          f"it holds a false-positive rate of {flag.fpr:.3f} instead (logged as flag_fpr). Give more "
                          "held-out data, or raise flag_fpr.", stacklevel=3)
        return flag

    def due(self, step: int) -> bool:
        """Whether a check is due after training step ``step`` (a step schedule, or step 0 with
        ``check_at_start``); never twice at one step."""
        if step == self.last_step:
            return False
        if step == 0:  # the baseline, unless this watch already checked (a resumed run is past its baseline)
            return self.check_at_start and self.last_step is None
        return self.every_n_steps is not None and step % self.every_n_steps == 0

    def due_at_epoch_end(self, epoch: int, step: int) -> bool:
        """Whether a check is due at the end of epoch ``epoch`` (0-based) reached at step ``step``."""
        n = self.every_n_epochs
        return n is not None and (epoch + 1) % n == 0 and step != self.last_step

    # ------------------------------------------------------------------------------------------------------
    def check(self, model: nn.Module, step: int, *, epoch: int | None = None, can_stop: bool = True) -> CheckResult:
        """Measure, reduce over processes, record, and decide. Collective: every rank calls it at the same step.

        Args:
            model: the model :meth:`setup` saw (its weights now).
            step: the training step, the x-axis of every logged value.
            epoch: the epoch, recorded in the history when given.
            can_stop: feed the stop rule and the safe state (``False`` for checks outside training).
        """
        if self.setup_state is None:
            raise RuntimeError("Call MemorizationWatch.setup(model, ...) before the first check.")
        state, governor = self.setup_state, self.governor
        self.last_step = step
        device = _device(model)
        entered = self.clock()
        if can_stop and self.num_checks > 0:  # training since the last check (none before the first)
            (train_seconds,) = self._max_over_ranks([entered - self._since], device)
            governor.add_training(train_seconds)
        tier = self._tier(can_stop)
        if can_stop:
            self.num_checks += 1
        full = tier.probes > 0
        world_size = state.probes.world_size
        rows = local_rows(tier.probes, world_size) if full else len(state.probes.noise)  # light: unused
        loss_reference = None if state.loss_reference is None else _first_images(state.loss_reference,
                                                                                 local_rows(tier.images, world_size))
        request = MeasureRequest(noise=state.probes.noise[:rows], timesteps=state.timesteps,
                                 num_sampling_steps=self.probes.num_sampling_steps, seed=self.probes.seed,
                                 sharpness=self.sharpness, train_data=state.train_data,
                                 warm_start=_first_rows(state.warm_start, rows), interrupt=self._interrupt(),
                                 conditions=self.conditions, reference=state.reference,
                                 loss_reference=loss_reference, null=state.null, measure_probes=full,
                                 labels_only=tier.labels_only)
        error = None
        start = self.clock()
        try:
            with self.measured_weights(model):
                measured = self.measure_fn(model, request)
            if full == (measured.report is None):
                raise ValueError(f"the measurement function returned report={measured.report!r} for "
                                 f"measure_probes={full}: measure the probes exactly when asked to")
        except Exception as err:  # a failed check is skipped and reported, never allowed to end training
            if isinstance(err, torch.cuda.OutOfMemoryError):
                torch.cuda.empty_cache()
            state.warm_start, error = None, f"{type(err).__name__}: {err}"
        seconds = self.clock() - start
        ok = state.reducer.all_true(error is None)
        if can_stop:  # checks outside training stay out of the accounts, and out of the training time
            (slowest,) = self._max_over_ranks([seconds], device)
            governor.record(tier, slowest, measured=ok)
            self._since = self.clock()
        else:
            self._since += self.clock() - entered
        if not ok:
            return self._failed(step, error)
        report = measured.report
        gap_partial = False
        cut: dict[str, float] = {}  # the values on the governor's cut (a prefix), when it cuts from the next check
        if report is None:  # a loss-gap check: the loss gap only
            scalars = {}
        else:
            scalars, cut_probes = self._reduce(report, self._reduce_null(measured.null), tier.probes, tier.cut_probes)
            scalars |= {names.conditional(k): v for k, v in measured.conditional.items()}
            cut |= cut_probes
            if state.reference is not None:
                scalars |= self._reduce_reference(measured.reference)
                gap_partial = measured.reference is not None and measured.reference.partial
        if state.loss_reference is not None:
            loss, cut_loss = self._reduce_loss_gap(measured.loss_gap, tier.images, tier.cut_images)
            scalars |= loss
            cut |= cut_loss
            scalars[names.LOSS_GAP_IMAGES_MEASURED] = float(tier.images)
        partial = state.reducer.any_true((report is not None and report.partial) or gap_partial)
        scalars[names.SECONDS] = seconds  # the whole measurement, this rank
        scalars[names.PARTIAL] = float(partial)
        scalars[names.CHECK_FAILURES] = float(self.failures)
        if math.isfinite(governor.overhead):  # from the first check after some training on
            scalars[names.OVERHEAD] = governor.overhead
        scalars[names.PROBES_MEASURED] = float(tier.probes)
        self.history.append({"step": float(step), **({} if epoch is None else {"epoch": float(epoch)}), **scalars})
        if report is not None:
            state.warm_start = _merge_rows(state.warm_start, {t: s.eigenvectors for t, s in report.stats.items()
                                                              if s.eigenvectors is not None})
            self._warn_unconverged(scalars[names.CONVERGED_FRACTION], step)
        result = CheckResult(step=step, scalars=scalars, prefix=self.prefix, report=report, partial=partial,
                             message=self.summary_line(scalars, step, governor.skipped(tier)))
        if can_stop:
            self._decide(model, result)
            self._rebase(scalars, cut)
            if tier.cut_probes < tier.probes:
                self._warn_weaker_copy_stop(tier.probes, tier.cut_probes)
        return result

    def _warn_weaker_copy_stop(self, before: int, after: int) -> None:
        """Say what the governor's cut of the probes costs the copy-rate stop (its power at ``COPY_RATE_TO_CATCH``
        on ``after`` probes against ``before``), and what keeps it."""
        if self.monitor_key != names.NN_RATE_LOWER or self.rule.threshold is None:
            return
        rate, threshold = COPY_RATE_TO_CATCH, self.rule.threshold
        warnings.warn(
            f"memcallback: to keep governor.max_overhead={self.governor_config.max_overhead:g}, the checks of the copy "
            f"rate label {after} of the {before} probes from now on: a model whose samples copy at {rate:.0%} now "
            f"passes the stop rule with probability {copy_rate_power(rate, after, threshold):.2f} at a check "
            f"({copy_rate_power(rate, before, threshold):.2f} with {before}). To keep the stop as sharp, raise "
            "governor.max_overhead, check less often (every_n_train_steps), or give held-out images (the loss gap's "
            "light checks cost forward passes only).", stacklevel=3)

    def _rebase(self, scalars: dict[str, float], cut: dict[str, float]) -> None:
        """From the next check the monitor is measured on a prefix of its probes or images (the governor's cut):
        shift the stop rule's best value by the difference the cut makes at this check (both estimates come from the
        same weights), so that a rise is still measured against the best value on the same footing."""
        key = self.monitor_key
        if key in cut and math.isfinite(shift := cut[key] - scalars[key]) and math.isfinite(self.rule.best):
            self.rule.best += shift

    def _tier(self, can_stop: bool) -> Tier:
        """What this check measures: everything outside training, the cost governor's first tier at the first check,
        a light one off the ``every_n_checks`` cycle, else the cost governor's choice."""
        if not can_stop:
            return self.governor.full
        if self.num_checks == 0:
            return self.governor.first()
        if self.num_checks % self.probes.every_n_checks:
            return self.governor.light()
        return self.governor.choose()

    def _max_over_ranks(self, values: list[float], device: torch.device) -> list[float]:
        """The maximum of each of ``values`` over ranks (the cost governor's inputs, so every rank decides alike)."""
        probes = self.setup_state.probes
        local = torch.tensor(values, dtype=torch.float64, device=device)
        return max_over_ranks(self.setup_state.reducer, local, probes.rank, probes.world_size).tolist()

    def measured_weights(self, model: nn.Module) -> ExitStack:
        """The context of one measurement: float32, and the averaged weights swapped in when they are measured."""
        stack = ExitStack()
        averaged = self.setup_state.averaged if self.setup_state is not None else None
        if self.weights == "ema" and averaged is not None:
            stack.enter_context(averaged.swapped_in())
        stack.enter_context(full_precision(model))
        return stack

    def _interrupt(self) -> Callable[[], bool] | None:
        """The time budget as the measurement's ``interrupt`` (collective when every rank makes the same calls)."""
        if self.time_budget_s is None:
            return None
        start, budget, state = self.clock(), self.time_budget_s, self.setup_state

        def over_budget() -> bool:
            late = self.clock() - start > budget
            return state.reducer.any_true(late) if state.collective_interrupt else late

        return over_budget

    def _reduce_null(self, null: SharpnessStats | None) -> dict[str, float]:
        """The flag's threshold from every rank's null scores together (the conformal quantile at
        ``flag_fpr``) and their mean; ``{}`` without null images, or when some were not measured (a cut-short
        check: the fixed ``flag_threshold`` applies)."""
        state = self.setup_state
        if state.null is None:
            return {}
        local = torch.full((1, state.null.images.shape[0]), math.nan, dtype=torch.float64,
                           device=state.null.images.device)
        if null is not None and not null.partial:
            local[0] = null.memorization_score.detach().to(local)
        values = gather_probes(state.reducer, local, state.probes.rank, state.probes.world_size, state.num_null)[0]
        if not bool(torch.isfinite(values).all()):
            return {}
        return {names.FLAG_THRESHOLD: conformal_threshold(values, self.sharpness.flag_fpr),
                names.SCORE_NULL_IMAGES: values.mean().item()}

    def _reduce(self, report: SharpnessReport, null: dict[str, float], num_probes: int,
                cut: int) -> tuple[dict[str, float], dict[str, float]]:
        """The summary of every rank's probes together (the first ``num_probes`` of the probe set): per-probe
        values gathered in probe order, padding dropped, then the one summary
        (:func:`~memcallback.measure.report.summarize`); and the same of the first ``cut`` probes only (empty when
        ``cut`` is all of them). Every key of the schema is there on every rank: what a cut-short measurement did
        not reach is NaN. The primary timestep's flag, here and in ``report``: with a null threshold (``null``, from
        :meth:`_reduce_null`) the score above it; with the copy flag (set up only without score null) the probes'
        distance ratio below its threshold (with training data); else the score above ``flag_threshold``."""
        state = self.setup_state
        probes = state.probes
        per_sample = report.per_sample()
        if state.copy_flag is not None and report.labels is not None:  # labels-only checks too
            flagged = state.copy_flag(report.labels.distance_ratio)
            if report.stats:
                report.primary.flagged = flagged
            for key in (names.FLAGGED_FRACTION, names.at_timestep(state.timesteps[0], names.FLAGGED_FRACTION)):
                per_sample[key] = flagged.float()
        keys = sorted(names.per_sample_keys(state.timesteps, state.train_data is not None))
        missing = torch.full((local_rows(num_probes, probes.world_size),), math.nan, dtype=torch.float64)
        local = torch.stack([per_sample[k].detach().to(torch.float64).reshape(-1) if k in per_sample
                             else missing.to(report.samples.device) for k in keys])
        values = dict(zip(keys, gather_probes(state.reducer, local, probes.rank, probes.world_size, num_probes),
                          strict=True))
        threshold = null.get(names.FLAG_THRESHOLD, self.sharpness.flag_threshold)
        if null:
            flagged = (values[names.SCORE] > threshold).double()
            for key in (names.FLAGGED_FRACTION, names.at_timestep(state.timesteps[0], names.FLAGGED_FRACTION)):
                values[key] = flagged
            report.primary.flagged = report.primary.memorization_score > threshold
        flag = {} if state.copy_flag is None else {names.FLAG_RATIO: state.copy_flag.ratio,
                                                  names.FLAG_FPR: state.copy_flag.fpr}

        def summary(n: int) -> dict[str, float]:
            return (summarize({k: v[:n] for k, v in values.items()}, state.timesteps, report.seconds) | null
                    | {names.FLAG_THRESHOLD: threshold} | flag)

        return summary(num_probes), summary(cut) if cut < num_probes else {}

    def _reduce_reference(self, gap: SharpnessGap | None) -> dict[str, float]:
        """Mean scores at every rank's reference images together and their difference (NaN where not measured)."""
        state = self.setup_state
        n_local = state.reference.train.shape[0]
        local = torch.full((2, n_local), math.nan, dtype=torch.float64, device=state.reference.train.device)
        for row, stats in enumerate((None, None) if gap is None else (gap.train, gap.heldout)):
            if stats is not None and not stats.partial:
                local[row] = stats.memorization_score.detach().to(local)
        values = gather_probes(state.reducer, local, state.probes.rank, state.probes.world_size, state.num_reference)
        train, heldout = values.mean(dim=1).tolist()
        return {names.SCORE_TRAIN_IMAGES: train, names.SCORE_HELDOUT_IMAGES: heldout,
                names.SHARPNESS_GAP: train - heldout}

    def _reduce_loss_gap(self, gap: LossGap | None, num_images: int,
                         cut: int) -> tuple[dict[str, float], dict[str, float]]:
        """The loss gap of every rank's images together (the first ``num_images`` of its set): per-image errors
        gathered, then ``LossGap.summary()`` (NaN when not measured); and the same of the first ``cut`` images (empty
        when ``cut`` is all of them)."""
        state = self.setup_state
        ref = state.loss_reference
        n_local, num_levels = local_rows(num_images, state.probes.world_size), ref.noise.shape[1]
        local = torch.full((2 * num_levels, n_local), math.nan, dtype=torch.float64, device=ref.train.device)
        if gap is not None:
            local[:num_levels], local[num_levels:] = gap.train.T.to(local), gap.heldout.T.to(local)
        values = gather_probes(state.reducer, local, state.probes.rank, state.probes.world_size, num_images).cpu()
        def summary(v: Tensor) -> dict[str, float]:
            return loss_gap_summary(v[:num_levels].T, v[num_levels:].T)

        return summary(values), summary(values[:, :cut]) if cut < num_images else {}

    def _decide(self, model: nn.Module, result: CheckResult) -> None:
        if self.monitor_key not in result.scalars:  # a loss-gap check does not measure another monitor
            return
        value = result.scalars[self.monitor_key]
        result.fired = self.setup_state.reducer.any_true(self.rule.update(value))
        result.safe = not result.fired and math.isfinite(value) and self.rule.wait_count == 0
        if result.safe:
            self.safe_step = result.step
            if self.stop.restore_safe_weights:
                self._guarded("keeping the safe weights", self.safe_weights.keep, model, result.step,
                             self.setup_state.averaged)
            if self.on_safe is not None:
                self._guarded("saving the safe checkpoint", self.on_safe, result.step)
        if result.fired:
            self.stopped_step = result.step
            result.stop = self.stop.stop_training
            result.reason = f"Memorization rose at step {result.step}: {self.monitor} {self.rule.reason}."
            if self.stop.restore_safe_weights:
                result.restored = bool(self._guarded("restoring the safe weights", self.safe_weights.restore, model,
                                                     self.setup_state.averaged))

    def _guarded(self, what: str, fn: Callable[..., Any], *args: Any) -> Any:
        """Run a side job of the stop decision (copying, saving or restoring weights); a failure (a full disk, a
        state_dict that does not fit) is warned about once and never ends training. Returns ``fn``'s value or None."""
        try:
            return fn(*args)
        except Exception as err:
            if what not in self._reported:
                self._reported.add(what)
                warnings.warn(f"memcallback: {what} failed ({type(err).__name__}: {err}); training goes on. This "
                              "warning is shown once.", stacklevel=3)
            return None

    def _failed(self, step: int, error: str | None) -> CheckResult:
        self.failures += 1
        state = self.setup_state
        local = error is not None
        reason = error or "it failed on another rank"
        if "failure" not in self._reported and (local or state.probes.rank == 0):
            where = f" on rank {state.probes.rank}" if state.probes.world_size > 1 else ""
            warnings.warn(f"memcallback: the check at step {step} failed{where} and was skipped ({reason}). Training "
                          f"goes on; later failures are counted in {self.prefix}{names.CHECK_FAILURES} without "
                          "further warnings.", stacklevel=3)
            self._reported.add("failure")
        return CheckResult(step=step, scalars={names.CHECK_FAILURES: float(self.failures)}, prefix=self.prefix,
                           failed=True, error=reason, message=f"[memorization] step {step} | check failed ({reason})")

    def _warn_unconverged(self, converged_fraction: float, step: int) -> None:
        """Warn once when the eigenvalue solver stopped short of ``tol`` on some probes (the check still counts)."""
        if not converged_fraction < 1.0 or "convergence" in self._reported or self.setup_state.probes.rank != 0:
            return
        self._reported.add("convergence")
        warnings.warn(f"memcallback: at step {step} the eigenvalue solver did not reach tol={self.sharpness.tol:g} on "
                      f"{1 - converged_fraction:.0%} of the probes. The check is kept (its eigenvalues are the best "
                      f"Ritz estimates, which underestimate the flattest directions) and "
                      f"{self.prefix}{names.CONVERGED_FRACTION} tracks it; give the solver more Krylov steps or a "
                      "looser tol, or use solver='dense' for small data. This warning is shown once.", stacklevel=3)

    @staticmethod
    def summary_line(scalars: dict[str, float], step: int, skipped: str = "") -> str:
        """The one-line summary of a check, e.g. ``[memorization] step 1250 | score 0.127 | flagged 0% | ...``;
        ``skipped``: what the check left out (the cost governor's tier), shown after the step."""
        parts = [f"step {step}"] + ([skipped] if skipped else [])
        measured = not math.isnan(scalars.get(names.SCORE, math.nan))  # not at a light or cut-short check
        if measured:
            parts.append(f"score {scalars[names.SCORE]:.3f}")
        if not math.isnan(scalars.get(names.FLAGGED_FRACTION, math.nan)):
            parts.append(f"flagged {scalars[names.FLAGGED_FRACTION]:.0%}")
        if measured:
            parts += [f"d_eff {scalars['effective_dim']:.1f}", f"mu_max {scalars['mu_max']:.3f}"]
        if names.NN_RATE in scalars:
            parts.append(f"nn-rate {scalars[names.NN_RATE]:.0%}")
        if not math.isnan(scalars.get(names.AUROC, math.nan)):
            parts.append(f"AUROC {scalars[names.AUROC]:.3f}")
        if not math.isnan(scalars.get(names.SHARPNESS_GAP, math.nan)):
            parts.append(f"gap {scalars[names.SHARPNESS_GAP]:+.3f}")
        if not math.isnan(scalars.get(names.LOSS_GAP, math.nan)):
            parts.append(f"loss gap {scalars[names.LOSS_GAP]:+.3f}")
        parts.append(f"{scalars[names.SECONDS]:.2f} s" + (" (partial)" if scalars.get(names.PARTIAL) else ""))
        if names.OVERHEAD in scalars:
            parts.append(f"overhead {scalars[names.OVERHEAD]:.1%}")
        return "[memorization] " + " | ".join(parts)

    # ------------------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue after a resume, the solver's warm start included (not the safe weights:
        they live in checkpoints)."""
        timesteps = [] if self.setup_state is None else self.setup_state.timesteps
        warm_start = self._pending_warm_start if self.setup_state is None else self.setup_state.warm_start
        return {"rule": self.rule.state_dict(), "history": self.history, "stopped_step": self.stopped_step,
                "warm_start": warm_start, "safe_step": self.safe_step, "failures": self.failures,
                "num_checks": self.num_checks, "last_step": self.last_step,
                "governor": self._governor_state if self.governor is None else self.governor.state_dict(),
                "probes": {"seed": self.probes.seed, "num_samples": self.probes.num_samples, "timesteps": timesteps}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`; warns when the checkpoint was measured on other probes or timesteps.

        A run resumed from the check where the rule fired can stop again: the rule fires once per run.
        """
        probes = state.get("probes", {})
        same_probes = not probes or (probes.get("seed"), probes.get("num_samples")) == (self.probes.seed,
                                                                                      self.probes.num_samples)
        if not same_probes:
            warnings.warn(f"memcallback: the checkpoint was measured with seed={probes.get('seed')} and num_samples="
                          f"{probes.get('num_samples')}, this run uses seed={self.probes.seed} and num_samples="
                          f"{self.probes.num_samples}: the curves before and after the resume differ in probes.",
                          stacklevel=2)
        timesteps = [] if self.setup_state is None else self.setup_state.timesteps
        if probes and timesteps and list(probes.get("timesteps", [])) != list(timesteps):
            warnings.warn(f"memcallback: the checkpoint measured timesteps {probes.get('timesteps')}, this run "
                          f"measures {timesteps}; the stop rule starts afresh.", stacklevel=2)
            self.rule.reset()
            same_probes = False
        else:
            self.rule.load_state_dict(state.get("rule", {}))
            self.rule.stopped = False
        self.history = list(state.get("history", []))
        self.stopped_step = state.get("stopped_step")
        self.safe_step = state.get("safe_step")
        self.failures = int(state.get("failures", 0))
        self.num_checks = int(state.get("num_checks", len(self.history) + self.failures))
        self.last_step = state.get("last_step")
        warm_start = state.get("warm_start") if same_probes else None  # eigenvectors of the same probes only
        if self.setup_state is None:
            self._pending_warm_start = warm_start
        elif warm_start is not None:
            device = self.setup_state.probes.noise.device
            self.setup_state.warm_start = {int(t): v.to(device) for t, v in warm_start.items()}
        self._governor_state = dict(state.get("governor", {}))
        if self.governor is not None:
            self.governor.load_state_dict(self._governor_state)


def _device(model: object) -> torch.device:
    """Where the model's tensors live (the CPU for a model without any): the device of the collectives."""
    tensors = itertools.chain(model.parameters(), model.buffers()) if isinstance(model, nn.Module) else iter(())
    tensor = next(tensors, None)
    return torch.device("cpu") if tensor is None else tensor.device


def _first_rows(warm_start: dict[int, Tensor] | None, rows: int) -> dict[int, Tensor] | None:
    """The warm start of this rank's first ``rows`` probes (``None`` where it covers fewer)."""
    if warm_start is None:
        return None
    return {t: v[:rows] for t, v in warm_start.items() if v.shape[0] >= rows} or None


def _first_images(images: ReferenceImages, rows: int) -> ReferenceImages:
    """The first ``rows`` of this rank's share of a gap's images, with their noise."""
    return ReferenceImages(images.train[:rows], images.heldout[:rows], images.noise[:rows])


def _merge_rows(old: dict[int, Tensor] | None, new: dict[int, Tensor]) -> dict[int, Tensor] | None:
    """The warm start after a check that measured the first rows of the probes: its vectors there, the older
    vectors of the rows it did not measure; the older ones alone after a check that measured no level (labels only,
    or cut short while sampling)."""
    if not new:
        return old
    merged = {}
    for t, vectors in new.items():
        previous = None if old is None else old.get(t)
        if previous is not None and previous.shape[0] > vectors.shape[0] and previous.shape[1:] == vectors.shape[1:]:
            vectors = torch.cat([vectors, previous[vectors.shape[0]:].to(vectors)])
        merged[t] = vectors
    return merged


def _reference_share(train_data: Tensor, heldout_data: Tensor, noise: Tensor, seed: int, rank: int,
                     world_size: int) -> ReferenceImages:
    """This rank's share of ``len(noise)`` training and held-out images, each a seeded random selection
    (:func:`~memcallback.core.probes.sample_rows`), with their noise."""
    count = len(noise)
    train = train_data[sample_rows(len(train_data), count, seed).to(train_data.device)]
    heldout = heldout_data[sample_rows(len(heldout_data), count, seed + 1).to(heldout_data.device)]
    return ReferenceImages(*(shard(x, rank, world_size) for x in (train, heldout, noise)))  # noise stays on the CPU
