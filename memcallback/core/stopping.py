"""The early-stop rule and its settings: stop when memorization has risen, decided on fresh measurements only."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from memcallback.arguments import is_int, is_real, require
from memcallback.measure import names

MODES = ("max", "min")


@dataclass(frozen=True)
class StopConfig:
    """When a monitor stops training, and what it does then.

    Args:
        monitor: logged key the stop rule watches (with the monitor's prefix), e.g. ``memorization/score``.
        mode: ``"max"`` when larger values mean more memorization (score, flagged fraction), ``"min"`` when
            smaller ones do (effective dimension, ``mu``).
        threshold: absolute level the value must pass to alarm, or ``None`` for "any rise".
        min_delta: margin by which the value must be worse than the best so far.
        patience: consecutive alarming checks that stop training (>= 1).
        stop_training: stop the training job when the rule fires; ``False`` only warns.
        restore_safe_weights: when the rule fires, load the weights of the last safe check back into the
            model (kept as a CPU copy of its ``state_dict``, overwritten at every safe check).
    """

    monitor: str = names.PREFIX + names.SCORE
    mode: str = "max"
    threshold: float | None = 0.05
    min_delta: float = 0.05
    patience: int = 1
    stop_training: bool = True
    restore_safe_weights: bool = False

    def __post_init__(self) -> None:
        require(isinstance(self.monitor, str) and bool(self.monitor), "monitor", self.monitor,
                "a logged key such as 'memorization/score'")
        require(isinstance(self.mode, str) and self.mode in MODES, "mode", self.mode, f"one of {MODES}")
        require(self.threshold is None or (is_real(self.threshold) and math.isfinite(self.threshold)), "threshold",
                self.threshold, "a finite float or None")
        require(is_real(self.min_delta) and 0 <= self.min_delta < math.inf, "min_delta", self.min_delta,
                "a finite float >= 0")
        require(is_int(self.patience) and self.patience >= 1, "patience", self.patience, "an int >= 1")
        for name in ("stop_training", "restore_safe_weights"):
            require(isinstance(getattr(self, name), bool), name, getattr(self, name), "True or False")


class StopRule:
    """Decide when a memorization statistic has risen for long enough to stop training.

    The rule follows Lightning's ``EarlyStopping`` (patience counted in checks, ``min_delta``, a
    recorded reason, a resumable state) with one difference that matters for a memorization monitor:
    a flat series never stops training, however long it lasts. A check *alarms* when its value is

    * past ``threshold`` (above it for ``mode="max"``, below for ``"min"``), when a threshold is set, and
    * worse than the best (least memorized) value seen so far by more than ``min_delta``.

    Training stops after ``patience`` consecutive alarming checks; a quiet check resets the count.
    Non-finite values are ignored (a failed check never moves the rule). :meth:`update` must be called
    once per *fresh* measurement, which the monitoring core guarantees.

    Args:
        config: the settings (``mode``, ``threshold``, ``min_delta``, ``patience`` are used here).
    """

    def __init__(self, config: StopConfig | None = None) -> None:
        config = config or StopConfig()
        self.mode, self.threshold, self.min_delta = config.mode, config.threshold, float(config.min_delta)
        self.patience = config.patience
        self.reset()

    def reset(self) -> None:
        """Forget every measurement: no best value, no wait count, not stopped."""
        self.best = math.inf if self.mode == "max" else -math.inf
        self.wait_count = 0
        self.stopped = False
        self.reason = ""

    def _worse(self, value: float, reference: float) -> bool:
        return value > reference if self.mode == "max" else value < reference

    def update(self, value: float) -> bool:
        """Feed one fresh measurement; returns True at the check where the rule fires (once)."""
        if not math.isfinite(value):
            return False
        sign = 1.0 if self.mode == "max" else -1.0
        past_threshold = self.threshold is None or self._worse(value, self.threshold)
        rose = math.isfinite(self.best) and self._worse(value, self.best + sign * self.min_delta)
        if past_threshold and rose:
            self.wait_count += 1
        else:
            self.wait_count = 0
        self.best = min(self.best, value) if self.mode == "max" else max(self.best, value)
        fired = self.wait_count >= self.patience and not self.stopped
        if fired:
            self.stopped = True
            where = "" if self.threshold is None else f" past the threshold {self.threshold:g} and"
            checks = "1 check" if self.wait_count == 1 else f"{self.wait_count} consecutive checks"
            self.reason = (f"the value {value:.4g} stayed{where} above its best {self.best:.4g} by more than "
                           f"{self.min_delta:g} for {checks}")
            if self.mode == "min":
                self.reason = self.reason.replace("above", "below")
        return fired

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue after a resume."""
        return {"best": self.best, "wait_count": self.wait_count, "stopped": self.stopped, "reason": self.reason}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (missing keys keep their defaults, for older checkpoints)."""
        self.best = float(state.get("best", self.best))
        self.wait_count = int(state.get("wait_count", self.wait_count))
        self.stopped = bool(state.get("stopped", self.stopped))
        self.reason = str(state.get("reason", self.reason))
