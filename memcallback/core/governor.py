"""The cost governor: keeps the checks' share of training wall time under a target, check by check.

A check's cost is its wall time; the training time is the wall time between checks. The governor keeps both
running sums since the start of training and, before each check, picks the most complete *tier* whose predicted
cost keeps the running share ``checks / (training + checks)`` at or under ``max_overhead``:

* **light** (``probes = 0``): the loss gap alone (forward passes). Offered only when a light check measures the
  stop rule's monitor (a loss-gap key): the checks of the monitored value then stay ``every_n_steps`` apart and the
  stop is decided at the same check as without the governor. Full checks come whenever the budget allows one.
* **reduced** (``min_probes <= probes < num_samples``): the sharpness on a prefix of the fixed probe set, halving
  from the full set. Offered when the monitor needs the probes: every check still measures it, on the same
  nested probes. The probe count never rises again within a run (a ratchet), so from the first reduced check on
  the stop rule compares means over the same probes.
* **full**: every probe.

When even the cheapest tier does not fit, it is taken anyway (the schedule is never stretched past
``every_n_steps``) and the logged ``overhead`` shows the share above the target. The governor is pure arithmetic
on numbers every rank holds identically (the caller reduces the measured times over ranks first), so every rank
picks the same tier; its state is a plain dict that survives a resume.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from memcallback.arguments import is_int, is_real, require

#: The probe count of a light check: the loss gap alone.
LIGHT = 0


@dataclass(frozen=True)
class GovernorConfig:
    """How much of the training wall time the checks may take.

    Args:
        max_overhead: the largest share of wall time spent in checks, ``check seconds / (training seconds + check
            seconds)`` since the start of training, in ``(0, 1)``; ``None``: ungoverned (every check measures every
            probe; the share is still logged as ``overhead``).
        min_probes: the fewest probes a reduced check measures (when the stop rule's monitor needs the probes).
    """

    max_overhead: float | None = 0.05
    min_probes: int = 16

    def __post_init__(self) -> None:
        require(self.max_overhead is None or (is_real(self.max_overhead) and 0 < self.max_overhead < 1),
                "max_overhead", self.max_overhead, "a share of wall time in (0, 1), e.g. 0.05, or None (ungoverned)")
        require(is_int(self.min_probes) and self.min_probes >= 1, "min_probes", self.min_probes, "an int >= 1")


class CostGovernor:
    """The policy of :class:`GovernorConfig` for one probe set: which tier each check measures.

    Call :meth:`add_training` with the training seconds before a check, :meth:`choose` for its tier, and
    :meth:`record` with what it measured and cost. Checks that bypass :meth:`choose` (the baseline) are recorded
    the same way.

    Args:
        config: the target and the floor of reduced checks.
        num_samples: the size of the probe set.
        world_size: the number of processes: a reduced check measures ``ceil(m / world_size)`` probes on each rank,
            so its probe counts are those that layout gives.
        light_measures_monitor: whether a light check measures the stop rule's monitor (light tier offered,
            reduced ones not); otherwise reduced tiers are offered and light ones not.
    """

    def __init__(self, config: GovernorConfig, num_samples: int, world_size: int,
                 light_measures_monitor: bool) -> None:
        self.config, self.num_samples = config, num_samples
        self.light_measures_monitor = light_measures_monitor
        if light_measures_monitor:
            self.tiers = [num_samples, LIGHT]
        else:
            self.tiers = [num_samples]  # halving, as the shards allow, down to min_probes
            while config.min_probes <= (m := _prefix_size(math.ceil(self.tiers[-1] / 2), num_samples,
                                                          world_size)) < self.tiers[-1]:
                self.tiers.append(m)
        self.train_seconds = 0.0
        self.check_seconds = 0.0
        self.costs: dict[int, float] = {}  # the last measured seconds of a check, per probe count
        self.ceiling = num_samples  # the most probes a reduced-tier run may still measure (the ratchet)

    @property
    def overhead(self) -> float:
        """The running share of wall time spent in checks (0 before any)."""
        total = self.train_seconds + self.check_seconds
        return self.check_seconds / total if total > 0 else 0.0

    def add_training(self, seconds: float) -> None:
        """Count ``seconds`` of training (wall time between checks)."""
        self.train_seconds += max(float(seconds), 0.0)

    def estimate(self, probes: int) -> float:
        """The predicted seconds of a check measuring ``probes`` probes: its last measured cost, else the measured
        cost of the nearest probe count scaled in proportion (0 when nothing comparable was measured yet)."""
        if probes in self.costs:
            return self.costs[probes]
        measured = [m for m in self.costs if m != LIGHT]
        if probes == LIGHT or not measured:
            return 0.0
        nearest = min(measured, key=lambda m: abs(m - probes))
        return self.costs[nearest] * probes / nearest

    def fits(self, seconds: float) -> bool:
        """Whether a check of ``seconds`` keeps the running share at or under the target."""
        target = self.config.max_overhead
        spent = self.check_seconds + seconds
        return target is None or spent <= target * (self.train_seconds + spent)

    def choose(self) -> int:
        """The probe count of the next check: the most complete tier that fits, else the cheapest."""
        tiers = [m for m in self.tiers if m == LIGHT or m <= self.ceiling]
        return next((m for m in tiers if self.fits(self.estimate(m))), tiers[-1])

    def record(self, probes: int, seconds: float, *, measured: bool = True) -> None:
        """Count a check of ``seconds`` that measured ``probes`` probes (``measured=False``: it failed, so its time
        counts but says nothing about the tier's cost)."""
        self.check_seconds += max(float(seconds), 0.0)
        if not measured:
            return
        self.costs[probes] = float(seconds)
        if not self.light_measures_monitor and LIGHT < probes < self.num_samples:
            self.ceiling = min(self.ceiling, probes)

    def skipped(self, probes: int) -> str:
        """What a check of ``probes`` probes left out, for the summary line (empty for a full check)."""
        if probes == LIGHT:
            return "light (loss gap only)"
        return "" if probes >= self.num_samples else f"{probes}/{self.num_samples} probes"

    def state_dict(self) -> dict[str, Any]:
        """The running sums, the measured costs and the ratchet."""
        return {"train_seconds": self.train_seconds, "check_seconds": self.check_seconds,
                "costs": {int(m): s for m, s in self.costs.items()}, "ceiling": self.ceiling}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (missing keys keep their fresh values, for older checkpoints)."""
        self.train_seconds = float(state.get("train_seconds", self.train_seconds))
        self.check_seconds = float(state.get("check_seconds", self.check_seconds))
        self.costs = {int(m): float(s) for m, s in state.get("costs", self.costs).items()}
        self.ceiling = min(int(state.get("ceiling", self.ceiling)), self.num_samples)


def _prefix_size(probes: int, num_samples: int, world_size: int) -> int:
    """How many probes of the global set a prefix of ``ceil(probes / world_size)`` rows on every rank covers (rank
    ``r`` holds probes ``r, r + W, ...``; padding beyond ``num_samples`` is dropped)."""
    return min(math.ceil(probes / world_size) * world_size, num_samples)


def local_rows(probes: int, world_size: int) -> int:
    """The rows of each rank's shard a check of ``probes`` global probes measures."""
    return math.ceil(probes / world_size)
