"""The early-stop rule: stop when memorization has risen, decided on fresh measurements only."""

from __future__ import annotations

import math
from typing import Any

from memcallback.arguments import is_int, is_real, require

MODES = ("max", "min")


class StopRule:
    """Decide when a memorization statistic has risen for long enough to stop training.

    The rule follows Lightning's ``EarlyStopping`` (patience counted in checks, ``min_delta``, a
    recorded reason, a resumable state) with one difference that matters for a memorization monitor:
    a flat series never stops training, however long it lasts. A check *alarms* when its value is

    * past ``threshold`` (above it for ``mode="max"``, below for ``"min"``), when a threshold is set, and
    * worse than the best (least memorized) value seen so far by more than ``min_delta``.

    Training stops after ``patience`` consecutive alarming checks; a quiet check resets the count.
    Non-finite values are ignored (a failed check never moves the rule). :meth:`update` must be called
    once per *fresh* measurement, which the callback guarantees.

    Args:
        mode: ``"max"`` when larger values mean more memorization (score, flagged fraction), ``"min"``
            when smaller ones do (effective dimension, ``mu``).
        threshold: absolute level the value must pass to alarm, or ``None`` for "any rise".
        min_delta: margin by which the value must be worse than the best so far.
        patience: consecutive alarming checks that stop training (>= 1).
    """

    def __init__(self, mode: str = "max", threshold: float | None = None, min_delta: float = 0.0,
                 patience: int = 2) -> None:
        require(isinstance(mode, str) and mode in MODES, "mode", mode, f"one of {MODES}")
        require(threshold is None or (is_real(threshold) and math.isfinite(threshold)), "threshold", threshold,
                "a finite float or None")
        require(is_real(min_delta) and 0 <= min_delta < math.inf, "min_delta", min_delta, "a finite float >= 0")
        require(is_int(patience) and patience >= 1, "patience", patience, "an int >= 1")
        self.mode, self.threshold, self.min_delta, self.patience = mode, threshold, float(min_delta), patience
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
