"""The cost governor: keeps what the checks add to the training wall time under a target, check by check.

A check's cost is its wall time; the training time is the wall time between checks. Before each check the governor
picks a :class:`Tier`: how many of the fixed probes it samples and measures, and how many of the loss gap's fixed
images it measures. What it may cut depends on what the stop rule monitors, so that every check still measures the
monitored value and the checks of that value stay ``every_n_steps`` apart (the schedule is never stretched):

* **The monitor is a loss-gap key** (held-out data given): a check is *full* (every probe) or *light* (no probe, the
  loss gap alone, forward passes only). A full check comes whenever the running overhead since the start of training,
  ``check seconds / training seconds``, stays at or under ``max_overhead`` with it, else a light one; since both measure
  the monitor, the stop is decided at the same check as without the governor. The first check (the baseline, before
  any training has paid for it) is light too, and until a full check has been timed its cost is predicted from the
  light checks' cost per image and the network passes of the two (:func:`predicted_probe_cost`), so that a full
  check is not started on a guess. When even a light check costs more
  than ``max_overhead`` times one training interval, the loss gap measures half its images (a prefix of the fixed
  set), and so on down to ``min_fraction`` of them.
* **The monitor is the probes' copy rate** (training data but no held-out data, the default then): a check is full
  (the sharpness of the probes measured too) or light (the probes sampled and labelled against the training images,
  no Jacobian product: a fraction of a full check), chosen on the running overhead as for the loss gap, the first
  check light too, a full check's cost predicted from the light checks' (``probe_cost`` sampled probes a probe).
  When even a light check costs more than ``max_overhead`` times one training interval, the probes are halved, down
  to ``min_fraction`` of them; the loss gap, when there is one, is halved alike.
* **The monitor needs the sharpness** (the score, or another statistic of the probes): every check measures a
  prefix of the fixed probes, halved from the full set while a check costs more than ``max_overhead`` times one
  training interval, down to ``min_fraction`` of them; the loss gap, when there is one, is halved alike.

The counts that are cut (the probes, or the loss gap's images) only ever fall within a run (a ratchet). A cut is
decided one check ahead: that check measures the old count, the watch computes the monitored value on both from the
same weights and moves the stop rule's best value by their difference, so a rise is still measured on one footing.
The cut is decided on one training interval (the steady state; while a check at the current count would leave the
running overhead above the target, as after the baseline check, a check may cost half of that), the choice between
full and light on the running overhead (which pays back the baseline check too). When even the smallest tier does
not fit, it is taken anyway and the logged ``overhead`` shows how far above the target it is. The governor is
arithmetic on numbers every rank holds identically (the caller reduces the measured times over ranks first, taking
their maximum), so every rank picks the same tier; its state is a plain dict that survives a resume.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from memcallback.arguments import is_real, require


@dataclass(frozen=True)
class GovernorConfig:
    """How much of the training wall time the checks may take.

    Args:
        max_overhead: the most the checks may add to the training wall time, ``check seconds / training seconds``
            since the start of training, in ``(0, 1)``; ``None``: ungoverned (every check measures every probe and
            image; the overhead is still logged as ``overhead``).
        min_fraction: the smallest fraction of the probes (or of the loss gap's images, see the module docstring) a
            cut check measures, in ``(0, 1]``; 1: never cut them.
    """

    max_overhead: float | None = 0.05
    min_fraction: float = 0.25

    def __post_init__(self) -> None:
        require(self.max_overhead is None or (is_real(self.max_overhead) and 0 < self.max_overhead < 1),
                "max_overhead", self.max_overhead, "a fraction of training time in (0, 1), e.g. 0.05, or None "
                "(ungoverned)")
        require(is_real(self.min_fraction) and 0 < self.min_fraction <= 1, "min_fraction", self.min_fraction,
                "a fraction in (0, 1], e.g. 0.25 (1: never measure fewer probes or images)")


@dataclass(frozen=True)
class Tier:
    """What one check measures.

    Attributes:
        probes: probes sampled (and labelled), a prefix of the probe set (0: a loss-gap check, the loss gap alone).
        images: training and as many held-out images of the loss gap, a prefix of its set (0 without a loss gap).
        labels_only: the probes are sampled and labelled but their sharpness is not measured (a light check when
            the monitor is their copy rate).
        cut_probes: the most probes the checks after this one measure (``None``: ``probes``); smaller when the
            governor cuts them, which this check prepares (the stop rule's best value is moved to the cut).
        cut_images: the same for the loss gap's images.
    """

    probes: int
    images: int
    cut_probes: int | None = None
    cut_images: int | None = None
    labels_only: bool = False

    def __post_init__(self) -> None:
        for name, count in (("cut_probes", self.probes), ("cut_images", self.images)):
            if getattr(self, name) is None:
                object.__setattr__(self, name, count)

    @property
    def key(self) -> str:
        """``"{probes}/{images}"``, with ``"/labels"`` for a labels-only tier: the tier in a state dict."""
        return f"{self.probes}/{self.images}" + ("/labels" if self.labels_only else "")

    @property
    def kind(self) -> str:
        """``"loss_gap"`` (no probe), ``"labels"`` (probes sampled and labelled only) or ``"full"``."""
        return "loss_gap" if self.probes == 0 else "labels" if self.labels_only else "full"

    @property
    def size(self) -> int:
        """The count a check of this kind costs in proportion to: its images without probes, else its probes."""
        return self.images if self.probes == 0 else self.probes


class CostGovernor:
    """The policy of :class:`GovernorConfig` for one probe set and loss gap: the tier of each check.

    Call :meth:`add_training` with the training seconds before a check, :meth:`choose` for its tier, and
    :meth:`record` with what it measured and cost. Checks that bypass :meth:`choose` (the first one, which measures
    everything) are recorded the same way.

    Args:
        config: the target and the floor of cut checks.
        num_probes: the size of the probe set.
        num_images: the loss gap's images of each kind (0: no loss gap).
        world_size: the number of processes: a prefix of ``n`` of a set sharded over ranks is ``ceil(n / W)`` rows
            on each rank, so the counts are those this layout gives.
        light_measures_monitor: whether a light check (the loss gap alone) measures the stop rule's monitor (a
            loss-gap key).
        probe_cost: the predicted cost of the probe part of a full check per probe, in units of what a light check
            costs in proportion to: one loss-gap image (:func:`predicted_probe_cost`), or with ``labels_monitor``
            one sampled and labelled probe (:func:`predicted_labels_cost`); with it and a light check that measures
            the monitor the first check is light and a full check's cost is predicted from the light checks' until
            one is timed. ``None``: the first check measures everything.
        labels_monitor: whether the monitor is the probes' copy rate, which a labels-only check measures (exclusive
            with ``light_measures_monitor``).
    """

    def __init__(self, config: GovernorConfig, num_probes: int, num_images: int, world_size: int,
                 light_measures_monitor: bool, probe_cost: float | None = None, labels_monitor: bool = False) -> None:
        if light_measures_monitor and labels_monitor:
            raise ValueError("the monitor is either a loss-gap key (light_measures_monitor) or the probes' copy rate "
                             "(labels_monitor), not both")
        self.config, self.num_probes, self.num_images = config, num_probes, num_images
        self.light_measures_monitor, self.labels_monitor = light_measures_monitor, labels_monitor
        self.probe_cost = probe_cost
        cut = num_images if light_measures_monitor else num_probes  # the count a cut check lowers
        self.cuts = _halvings(cut, math.ceil(config.min_fraction * cut), world_size)
        # with the probes cut, the loss gap (not the monitor then) is cut alike, halving for halving
        self.image_cuts = _halvings(num_images, math.ceil(config.min_fraction * num_images), world_size)
        self.train_seconds = 0.0
        self.check_seconds = 0.0
        self.last_interval = 0.0  # the training seconds before the last check
        self.costs: dict[str, float] = {}  # the last measured seconds of a check, per Tier.key
        self.ceiling = cut  # the ratchet: the most probes (or loss images) a check may still measure

    @property
    def full(self) -> Tier:
        """Every probe and image."""
        return Tier(self.num_probes, self.num_images)

    @property
    def overhead(self) -> float:
        """What the checks added to the training wall time so far, ``check seconds / training seconds`` (NaN before
        any training: the watch does not log it then)."""
        return self.check_seconds / self.train_seconds if self.train_seconds > 0 else math.nan

    def add_training(self, seconds: float) -> None:
        """Count ``seconds`` of training (the wall time since the last check)."""
        self.last_interval = max(float(seconds), 0.0)
        self.train_seconds += self.last_interval

    def first(self) -> Tier:
        """The tier of the first check of a run: light when a light check measures the monitor and the cost of a
        full one can be predicted (``probe_cost``), else every probe and image. A baseline that measures everything
        is paid before any training does, and is most of what a short run's checks cost."""
        if self.config.max_overhead is not None and self.probe_cost is not None:
            if self.light_measures_monitor:
                return self.light()
            if self.labels_monitor:
                return self.light()
        return self.full

    def estimate(self, tier: Tier) -> float:
        """The predicted seconds of a check of ``tier``: its last measured cost, else the cost measured for the
        nearest tier of the same kind (:attr:`Tier.kind`) scaled in proportion to its size (:attr:`Tier.size`); a
        full check before any was timed, from the light checks' seconds per unit ``g`` (a loss-gap image, or a
        labelled probe), as ``g (images + probe_cost probes)`` after loss-gap checks and ``g probe_cost probes``
        after labels-only ones (0 when nothing can predict it). With a loss gap beside the copy rate a labels-only
        check's seconds per probe include its images' share, so the prediction errs high: a full check waits longer,
        never overshoots by it."""
        if tier.key in self.costs:
            return self.costs[tier.key]
        timed = [_tier(key) for key in self.costs]
        same = [t for t in timed if t.kind == tier.kind]
        if not same:
            lights = [t for t in timed if t.kind != "full" and t.size > 0]
            if tier.kind != "full" or self.probe_cost is None or not lights:
                return 0.0
            nearest = min(lights, key=lambda t: abs(t.size - tier.size))
            per_unit = self.costs[nearest.key] / nearest.size
            light_units = tier.images if nearest.kind == "loss_gap" else 0
            return per_unit * (light_units + self.probe_cost * tier.probes)
        nearest = min(same, key=lambda t: abs(t.size - tier.size))
        return self.costs[nearest.key] * tier.size / max(nearest.size, 1)

    def choose(self) -> Tier:
        """The tier of the next check (see the module docstring)."""
        target = self.config.max_overhead
        if target is None:
            return self.full
        # the cost a check at every interval may have; half of it while a check at the current count would leave
        # the running overhead above the target (the first checks, paid before any training, being paid back)
        behind = self.check_seconds + self.estimate(self._cut(self.ceiling)) > target * self.train_seconds
        steady = target * self.last_interval * (0.5 if behind else 1.0)
        cuts = [c for c in self.cuts if c <= self.ceiling]
        cut = next((c for c in cuts if self.estimate(self._cut(c)) <= steady), cuts[-1])
        if self.light_measures_monitor:
            full, light = Tier(self.num_probes, self.ceiling, cut_images=cut), Tier(0, self.ceiling, cut_images=cut)
        else:  # the cut applies from the next check: this one measures both
            full = Tier(self.ceiling, self._images(self.ceiling), cut_probes=cut, cut_images=self._images(cut))
            if not self.labels_monitor:
                return full
            light = dataclasses.replace(full, labels_only=True)
        spent = self.check_seconds + self.estimate(full)
        return full if spent <= target * self.train_seconds else light

    def light(self) -> Tier:
        """A light check at the current counts: the loss gap alone, or with ``labels_monitor`` the probes sampled
        and labelled too (what measures the monitor then)."""
        if self.labels_monitor:
            return self._cut(self.ceiling)
        return Tier(0, self.ceiling if self.light_measures_monitor else self._images(self.ceiling))

    def _images(self, probes: int) -> int:
        """The loss gap's images that go with ``probes`` probes when the probes are cut (as many halvings)."""
        return self.image_cuts[min(self.cuts.index(probes), len(self.image_cuts) - 1)]

    def _cut(self, count: int) -> Tier:
        """The cheapest check that measures the monitor on ``count`` of the cut set."""
        if self.light_measures_monitor:
            return Tier(0, count)
        return Tier(count, self._images(count), labels_only=self.labels_monitor)

    def record(self, tier: Tier, seconds: float, *, measured: bool = True) -> None:
        """Count a check of ``tier`` that took ``seconds`` (``measured=False``: it failed, so its time counts but
        says nothing about the tier's cost)."""
        self.check_seconds += max(float(seconds), 0.0)
        if not measured:
            return
        self.costs[tier.key] = float(seconds)
        if self.light_measures_monitor:
            self.ceiling = min(self.ceiling, tier.cut_images)
        elif tier.probes > 0:  # a loss-gap check (every_n_checks) says nothing about the probes
            self.ceiling = min(self.ceiling, tier.cut_probes)

    def skipped(self, tier: Tier) -> str:
        """What a check of ``tier`` left out, and what the next ones will, for the summary line (empty for a full
        check)."""
        parts = ["light (loss gap only)"] if tier.probes == 0 else (
            [f"{tier.probes}/{self.num_probes} probes"] if tier.probes < self.num_probes else [])
        if tier.labels_only:
            parts.append("light (probes labelled, no sharpness)")
        if tier.images < self.num_images:
            parts.append(f"loss gap on {tier.images}/{self.num_images} images")
        if tier.cut_probes < tier.probes:
            parts.append(f"next checks on {tier.cut_probes} probes")
        if tier.cut_images < tier.images:
            parts.append(f"next checks' loss gap on {tier.cut_images} images")
        return ", ".join(parts)

    @property
    def mode(self) -> str:
        """What the light checks measure and the ratchet cuts: ``"loss_gap"`` (the loss gap's images), ``"labels"``
        (labelled probes) or ``"probes"`` (measured probes, no light check)."""
        return "loss_gap" if self.light_measures_monitor else "labels" if self.labels_monitor else "probes"

    def state_dict(self) -> dict[str, Any]:
        """The running sums, the measured costs and the ratchet (with what it cuts, and in which mode)."""
        return {"train_seconds": self.train_seconds, "check_seconds": self.check_seconds,
                "last_interval": self.last_interval, "costs": dict(self.costs), "ceiling": self.ceiling,
                "cuts": list(self.cuts), "mode": self.mode}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (missing keys keep their fresh values, for older checkpoints). The measured
        costs and the ratchet are kept only when they cut the same set in the same mode as this governor (same
        monitor, probes and images; a checkpoint without a mode predates the labels mode); the running sums always."""
        self.train_seconds = float(state.get("train_seconds", self.train_seconds))
        self.check_seconds = float(state.get("check_seconds", self.check_seconds))
        self.last_interval = float(state.get("last_interval", self.last_interval))
        saved_mode = state.get("mode")
        same_mode = saved_mode == self.mode if saved_mode is not None else self.mode != "labels"
        if same_mode and list(state.get("cuts", self.cuts)) == self.cuts:
            self.costs = {str(key): float(s) for key, s in state.get("costs", self.costs).items()}
            self.ceiling = int(state.get("ceiling", self.ceiling))


def predicted_probe_cost(num_probes: int, num_sampling_steps: int, num_timesteps: int, products: int,
                         measured_images: int, num_levels: int) -> float:
    """The predicted cost of the probe part of a full check per probe, in units of one loss-gap image, counted in
    network passes.

    A probe takes ``S = num_sampling_steps`` forward passes to sample, then at each of its ``L = num_timesteps``
    measurement levels one forward pass and ``P = products`` Jacobian products (each counted as two passes, a
    forward and a backward); the sharpness gap's
    and the null's images (``measured_images`` of them, at the primary level) cost ``1 + 2P`` each. An image of the
    loss gap is a training and a held-out image at ``K = num_levels`` levels, ``2K`` forward passes:

        probe_cost = (N_p (S + L (1 + 2P)) + N_m (1 + 2P)) / (2 K N_p)

    At the defaults (S = 50, L = 1, P = 61, no sharpness gap or null, K = 10) it is 8.65 (8.95 on the dense path of
    8x8 digits, P = 64); timed, a probe cost 4.5 - 9.2 loss-gap images on models from 8x8 digits to the
    35.7M-parameter CIFAR UNet (docs/benchmarks.md): at most 6% above the prediction. A prediction that is low lets
    the first full check overshoot by as much; its timed cost decides from then on.
    """
    return _full_passes(num_probes, num_sampling_steps, num_timesteps, products, measured_images) / (2 * num_levels)


def predicted_labels_cost(num_probes: int, num_sampling_steps: int, num_timesteps: int, products: int,
                          measured_images: int) -> float:
    """The predicted cost of the probe part of a full check per probe, in units of one probe of a labels-only check
    (sampled and labelled, ``S`` forward passes; the nearest-neighbour search is left out), counted as in
    :func:`predicted_probe_cost`:

        labels_cost = (N_p (S + L (1 + 2P)) + N_m (1 + 2P)) / (S N_p)

    At the defaults (S = 50, L = 1, P = 61) it is 3.46: a labels-only check costs under a third of a full one.
    """
    return _full_passes(num_probes, num_sampling_steps, num_timesteps, products, measured_images) / num_sampling_steps


def _full_passes(num_probes: int, num_sampling_steps: int, num_timesteps: int, products: int,
                 measured_images: int) -> float:
    """Network passes of a full check's probe part per probe (see :func:`predicted_probe_cost`)."""
    per_level = 1 + 2 * products
    passes = num_probes * (num_sampling_steps + num_timesteps * per_level) + measured_images * per_level
    return passes / num_probes


def _tier(key: str) -> Tier:
    probes, images, *labels = key.split("/")
    return Tier(int(probes), int(images), labels_only=bool(labels))


def _halvings(count: int, floor: int, world_size: int) -> list[int]:
    """``count``, then halved while the halves stay at or above ``floor``, each rounded to what a prefix of
    ``ceil(n / world_size)`` rows on every rank covers (padding beyond ``count`` dropped)."""
    sizes = [count]
    while floor <= (half := min(math.ceil(math.ceil(sizes[-1] / 2) / world_size) * world_size, count)) < sizes[-1]:
        sizes.append(half)
    return sizes


def local_rows(count: int, world_size: int) -> int:
    """The rows of each rank's shard that a prefix of ``count`` of a sharded set covers."""
    return math.ceil(count / world_size)
