"""Argument checks shared by the public constructors: one clear message naming the argument and what it accepts."""

from __future__ import annotations

import math
from collections.abc import Sequence


def is_int(value: object) -> bool:
    """An ``int`` that is not a ``bool`` (``True`` is an int to Python, never a count to a user)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_real(value: object) -> bool:
    """A real number (``int`` or ``float``, not ``bool``); NaN passes here and fails every range check."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def require(ok: bool, name: str, value: object, accepted: str) -> None:
    """Raise ``ValueError("{name}={value!r} is invalid: expected {accepted}.")`` unless ``ok``."""
    if not ok:
        raise ValueError(f"{name}={value!r} is invalid: expected {accepted}.")


def check_monitor_arguments(
    *,
    prefix: object,
    every_n_train_steps: object,
    every_n_epochs: object,
    counts: dict[str, object],
    flags: dict[str, object],
    seed: object,
    sigmas: object,
    timesteps: object,
    time_budget_s: object,
    monitor: object,
) -> tuple[tuple[float, ...], tuple[int, ...]]:
    """Validate the schedule, probe and output arguments of :class:`memcallback.MemorizationMonitor`.

    Returns:
        ``(sigmas, timesteps)`` as tuples.
    """
    require(isinstance(prefix, str) and bool(prefix), "prefix", prefix, "a non-empty string, e.g. 'memorization/'")
    if (every_n_train_steps is None) == (every_n_epochs is None):
        raise ValueError("Set exactly one of every_n_train_steps and every_n_epochs (the other to None); "
                         f"got every_n_train_steps={every_n_train_steps!r}, every_n_epochs={every_n_epochs!r}.")
    for name, value in (("every_n_train_steps", every_n_train_steps), ("every_n_epochs", every_n_epochs)):
        require(value is None or (is_int(value) and value >= 1), name, value, "an int >= 1")
    for name, value in counts.items():
        require(is_int(value) and value >= 1, name, value, "an int >= 1")
    for name, value in flags.items():
        require(isinstance(value, bool), name, value, "True or False")
    require(is_int(seed) and 0 <= seed < 2**63, "seed", seed, "an int in [0, 2**63)")
    for name, value, example in (("sigmas", sigmas, "[0.1]"), ("timesteps", timesteps, "[27]")):
        require(not isinstance(value, (str, bytes)) and isinstance(value, Sequence), name, value,
                f"a list, e.g. {example} (or [])")
    sigmas, timesteps = tuple(sigmas), tuple(timesteps)
    if not sigmas and not timesteps:
        raise ValueError("Give at least one measurement noise level: sigmas=[0.1] or timesteps=[27].")
    require(all(is_real(s) and 0 < s < 1 for s in sigmas), "sigmas", list(sigmas),
            "noise levels in (0, 1), e.g. [0.1]")
    require(all(is_int(t) and t >= 0 for t in timesteps), "timesteps", list(timesteps),
            "ints in [0, num_timesteps - 1] of the model's schedule, e.g. [27]")
    require(time_budget_s is None or (is_real(time_budget_s) and 0 < time_budget_s < math.inf), "time_budget_s",
            time_budget_s, "a positive finite number of seconds or None")
    require(isinstance(monitor, str) and monitor.startswith(prefix) and monitor != prefix, "monitor", monitor,
            f"one of this callback's keys, which start with prefix={prefix!r} (e.g. '{prefix}score')")
    return sigmas, timesteps
