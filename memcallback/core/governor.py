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
* **The monitor needs the probes** (the copy rate or the score; no held-out data): every check measures a prefix
  of the fixed probes, halved from the full set while a check costs more than ``max_overhead`` times one training
  interval, down to ``min_fraction`` of them; the loss gap, when there is one, is halved alike.

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
        probes: probes sampled and measured, a prefix of the probe set (0: a light check).
        images: training and as many held-out images of the loss gap, a prefix of its set (0 without a loss gap).
        cut_probes: the most probes the checks after this one measure (``None``: ``probes``); smaller when the
            governor cuts them, which this check prepares (the stop rule's best value is moved to the cut).
        cut_images: the same for the loss gap's images.
    """

    probes: int
    images: int
    cut_probes: int | None = None
    cut_images: int | None = None

    def __post_init__(self) -> None:
        for name, count in (("cut_probes", self.probes), ("cut_images", self.images)):
            if getattr(self, name) is None:
                object.__setattr__(self, name, count)

    @property
    def key(self) -> str:
        """``"{probes}/{images}"``: the tier in a state dict."""
        return f"{self.probes}/{self.images}"


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
        light_measures_monitor: whether a light check measures the stop rule's monitor (a loss-gap key).
        probe_cost: the predicted cost of the probe part of a full check per probe, in units of one loss-gap image
            (:func:`predicted_probe_cost`); with it and ``light_measures_monitor`` the first check is light and a
            full check's cost is predicted from the light checks' until one is timed. ``None``: the first check
            measures everything.
    """

    def __init__(self, config: GovernorConfig, num_probes: int, num_images: int, world_size: int,
                 light_measures_monitor: bool, probe_cost: float | None = None) -> None:
        self.config, self.num_probes, self.num_images = config, num_probes, num_images
        self.light_measures_monitor = light_measures_monitor
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
        if self.config.max_overhead is not None and self.light_measures_monitor and self.probe_cost is not None:
            return self.light()
        return self.full

    def estimate(self, tier: Tier) -> float:
        """The predicted seconds of a check of ``tier``: its last measured cost, else the cost measured for the
        nearest tier of the same kind (light or not) scaled in proportion to the count that differs; a check with
        probes before any was timed, from the light checks' seconds per image ``g``, as ``g (images + probe_cost
        probes)`` (0 when nothing can predict it)."""
        if tier.key in self.costs:
            return self.costs[tier.key]
        same = [_tier(key) for key in self.costs if (_tier(key).probes > 0) == (tier.probes > 0)]
        if not same:
            lights = [_tier(key) for key in self.costs if _tier(key).probes == 0 and _tier(key).images > 0]
            if tier.probes == 0 or self.probe_cost is None or not lights:
                return 0.0
            nearest = min(lights, key=lambda t: abs(t.images - tier.images))
            per_image = self.costs[nearest.key] / nearest.images
            return per_image * (tier.images + self.probe_cost * tier.probes)
        size = (lambda t: t.probes) if tier.probes > 0 else (lambda t: t.images)
        nearest = min(same, key=lambda t: abs(size(t) - size(tier)))
        return self.costs[nearest.key] * size(tier) / max(size(nearest), 1)

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
        if not self.light_measures_monitor:  # the cut applies from the next check: this one measures both
            return Tier(self.ceiling, self._images(self.ceiling), cut_probes=cut, cut_images=self._images(cut))
        full = Tier(self.num_probes, self.ceiling, cut_images=cut)
        spent = self.check_seconds + self.estimate(full)
        return full if spent <= target * self.train_seconds else Tier(0, self.ceiling, cut_images=cut)

    def light(self) -> Tier:
        """A light check at the loss gap's current count of images (the loss gap alone)."""
        return Tier(0, self.ceiling if self.light_measures_monitor else self._images(self.ceiling))

    def _images(self, probes: int) -> int:
        """The loss gap's images that go with ``probes`` probes when the probes are cut (as many halvings)."""
        return self.image_cuts[min(self.cuts.index(probes), len(self.image_cuts) - 1)]

    def _cut(self, count: int) -> Tier:
        """The cheapest check that measures the monitor on ``count`` of the cut set."""
        return Tier(0, count) if self.light_measures_monitor else Tier(count, self._images(count))

    def record(self, tier: Tier, seconds: float, *, measured: bool = True) -> None:
        """Count a check of ``tier`` that took ``seconds`` (``measured=False``: it failed, so its time counts but
        says nothing about the tier's cost)."""
        self.check_seconds += max(float(seconds), 0.0)
        if not measured:
            return
        self.costs[tier.key] = float(seconds)
        if self.light_measures_monitor:
            self.ceiling = min(self.ceiling, tier.cut_images)
        elif tier.probes > 0:  # a light check (every_n_checks) says nothing about the probes
            self.ceiling = min(self.ceiling, tier.cut_probes)

    def skipped(self, tier: Tier) -> str:
        """What a check of ``tier`` left out, and what the next ones will, for the summary line (empty for a full
        check)."""
        parts = ["light (loss gap only)"] if tier.probes == 0 else (
            [f"{tier.probes}/{self.num_probes} probes"] if tier.probes < self.num_probes else [])
        if tier.images < self.num_images:
            parts.append(f"loss gap on {tier.images}/{self.num_images} images")
        if tier.cut_probes < tier.probes:
            parts.append(f"next checks on {tier.cut_probes} probes")
        if tier.cut_images < tier.images:
            parts.append(f"next checks' loss gap on {tier.cut_images} images")
        return ", ".join(parts)

    def state_dict(self) -> dict[str, Any]:
        """The running sums, the measured costs and the ratchet (with what it cuts)."""
        return {"train_seconds": self.train_seconds, "check_seconds": self.check_seconds,
                "last_interval": self.last_interval, "costs": dict(self.costs), "ceiling": self.ceiling,
                "cuts": list(self.cuts)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (missing keys keep their fresh values, for older checkpoints). The measured
        costs and the ratchet are kept only when they cut the same set as this governor (same monitor, probes and
        images); the running sums always."""
        self.train_seconds = float(state.get("train_seconds", self.train_seconds))
        self.check_seconds = float(state.get("check_seconds", self.check_seconds))
        self.last_interval = float(state.get("last_interval", self.last_interval))
        if list(state.get("cuts", self.cuts)) == self.cuts:
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
    per_level = 1 + 2 * products
    passes = num_probes * (num_sampling_steps + num_timesteps * per_level) + measured_images * per_level
    return passes / (2 * num_levels * num_probes)


def _tier(key: str) -> Tier:
    probes, images = key.split("/")
    return Tier(int(probes), int(images))


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
