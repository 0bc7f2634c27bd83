"""The early-stop rule and its settings: stop when memorization has risen, decided on fresh measurements only."""

from __future__ import annotations

import math
from collections.abc import Collection
from dataclasses import dataclass, replace
from typing import Any

from memcallback.arguments import is_int, is_real, require
from memcallback.core.calibration import CALIBRATED_RULES
from memcallback.measure import names

MODES = ("max", "min")
#: ``monitor`` / ``threshold`` / ``min_delta`` chosen by the monitor from what it measures (``CALIBRATED_RULES``).
AUTO = "auto"


@dataclass(frozen=True)
class StopConfig:
    """When a monitor stops training, and what it does then.

    The default, ``monitor="auto"``, is decided at setup from what the monitor measures, each with its calibrated
    ``threshold`` and ``min_delta`` (:mod:`~memcallback.core.calibration`): the relative loss gap
    (``memorization/loss_gap``) when held-out data are given; else, with training data, the copy rate the probes
    show at 95% confidence (``memorization/nn_rate_lower``: stop once it passes 1%); else the memorization score
    (``memorization/score``). The loss gap's threshold and the copy rate's bound carried over to every data set
    they were tested on; the score's threshold did not, so with neither held-out nor training data the default
    stop is a fixed level on a scale that differs between data sets (README, "When it stops").

    Args:
        monitor: logged key the stop rule watches (with the monitor's prefix), e.g. ``memorization/loss_gap``, or
            ``"auto"`` (see above; then ``threshold`` and ``min_delta`` must be ``"auto"`` too).
        mode: ``"max"`` when larger values mean more memorization (score, flagged fraction, loss gap), ``"min"``
            when smaller ones do (effective dimension, ``mu``).
        threshold: absolute level the value must pass to alarm, ``None`` for "any rise", or ``"auto"``: the
            calibrated level of the monitor (an error at setup for a monitor that has none).
        min_delta: margin by which the value must be worse than the best so far, or ``"auto"`` (calibrated).
        patience: consecutive alarming checks that stop training (>= 1).
        stop_training: stop the training job when the rule fires; ``False`` only warns.
        restore_safe_weights: when the rule fires, load the weights of the last safe check back into the
            model (kept as a CPU copy of its ``state_dict``, overwritten at every safe check).
    """

    monitor: str = AUTO
    mode: str = "max"
    threshold: float | str | None = AUTO
    min_delta: float | str = AUTO
    patience: int = 1
    stop_training: bool = True
    restore_safe_weights: bool = False

    def __post_init__(self) -> None:
        require(isinstance(self.monitor, str) and bool(self.monitor), "monitor", self.monitor,
                "a logged key such as 'memorization/score'")
        require(isinstance(self.mode, str) and self.mode in MODES, "mode", self.mode, f"one of {MODES}")
        require(self.threshold is None or self.threshold == AUTO
                or (is_real(self.threshold) and math.isfinite(self.threshold)), "threshold", self.threshold,
                "a finite float, None (any rise) or 'auto' (calibrated)")
        require(self.min_delta == AUTO or (is_real(self.min_delta) and 0 <= self.min_delta < math.inf), "min_delta",
                self.min_delta, "a finite float >= 0 or 'auto' (calibrated)")
        if self.monitor == AUTO and (self.threshold != AUTO or self.min_delta != AUTO or self.mode != "max"):
            raise ValueError(f"monitor='auto' picks the monitor with its calibrated threshold and min_delta, but "
                             f"threshold={self.threshold!r}, min_delta={self.min_delta!r}, mode={self.mode!r} were "
                             "set: name the monitor too (e.g. monitor='memorization/loss_gap'), or leave them at "
                             "their defaults.")
        require(is_int(self.patience) and self.patience >= 1, "patience", self.patience, "an int >= 1")
        for name in ("stop_training", "restore_safe_weights"):
            require(isinstance(getattr(self, name), bool), name, getattr(self, name), "True or False")

    def resolve(self, prefix: str, logged: Collection[str]) -> StopConfig:
        """The concrete settings for a monitor that logs the keys ``logged`` (without ``prefix``): ``"auto"``
        replaced by the loss gap when it is logged, else the copy rate's lower bound when it is logged, else the
        score, and by their calibrated constants.

        Raises:
            ValueError: when ``threshold`` or ``min_delta`` is ``"auto"`` for a monitor with no calibrated rule.
        """
        if self.monitor == AUTO:
            key = next((k for k in (names.LOSS_GAP, names.NN_RATE_LOWER) if k in logged), names.SCORE)
        else:
            key = self.monitor.removeprefix(prefix)
        rule = CALIBRATED_RULES.get(key)
        for name in ("threshold", "min_delta"):
            if getattr(self, name) == AUTO and rule is None:
                raise ValueError(f"{name}='auto' has no calibrated value for monitor={prefix + key!r} (only for "
                                 f"{sorted(prefix + k for k in CALIBRATED_RULES)}); give {name} a number.")
        return replace(self, monitor=prefix + key,
                       threshold=rule.threshold if self.threshold == AUTO else self.threshold,
                       min_delta=rule.min_delta if self.min_delta == AUTO else self.min_delta)


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
        config: the settings (``mode``, ``threshold``, ``min_delta``, ``patience`` are used here); ``"auto"``
            values are resolved as for the memorization score until :meth:`configure` sets the final ones.
    """

    def __init__(self, config: StopConfig | None = None) -> None:
        self.configure(config or StopConfig())
        self.reset()

    def configure(self, config: StopConfig) -> None:
        """Take the settings of ``config`` (resolved first when it says ``"auto"``), keeping the state."""
        config = config.resolve(names.PREFIX, ()) if AUTO in (config.threshold, config.min_delta) else config
        self.mode, self.threshold, self.min_delta = config.mode, config.threshold, float(config.min_delta)
        self.patience = config.patience

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
