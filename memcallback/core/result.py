"""The outcome of one check of the monitoring core."""

from __future__ import annotations

from dataclasses import dataclass

from memcallback.measure import names
from memcallback.measure.report import SharpnessReport


@dataclass
class CheckResult:
    """The outcome of one :meth:`MemorizationWatch.check`.

    Attributes:
        step: the training step of the check.
        scalars: the reduced values, keys of :mod:`~memcallback.measure.names` without prefix (a failed check
            has ``check_failures`` only); identical on every rank except ``seconds``.
        prefix: the namespace of the logged keys.
        report: this rank's :class:`~memcallback.measure.SharpnessReport`, the payload of media (``None`` when
            the check failed or was a loss-gap check; at a labels-only check its ``stats`` are empty).
        failed: the check raised or met non-finite values on some rank; it was skipped.
        error: why it failed (this rank's error, or that it failed on another rank).
        partial: the time budget cut the measurement short on some rank; its values are kept.
        fired: the stop rule fired at this check (memorization rose).
        stop: ``fired`` and the settings say stop training.
        safe: the stop rule did not alarm: this check is the new last safe check.
        restored: the weights of the last safe check were loaded back into the model.
        message: the one-line summary of the check (or of its failure).
        reason: why the stop rule fired (empty unless ``fired``).
    """

    step: int
    scalars: dict[str, float]
    prefix: str = names.PREFIX
    report: SharpnessReport | None = None
    failed: bool = False
    error: str | None = None
    partial: bool = False
    fired: bool = False
    stop: bool = False
    safe: bool = False
    restored: bool = False
    message: str = ""
    reason: str = ""

    def metrics(self) -> dict[str, float]:
        """The scalars under their logged names (``prefix`` + key)."""
        return {self.prefix + name: value for name, value in self.scalars.items()}
