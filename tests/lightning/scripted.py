"""A monitor whose memorization score follows a script, through the public ``measure`` seam."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from memcallback import MemorizationMonitor
from memcallback.core import Measurement, MeasureRequest


class ScriptedMonitor(MemorizationMonitor):
    """The real measurement at every check, with every probe's memorization score replaced by the next value of
    ``series`` (so the reduced ``score`` is that value); ``None`` in the series keeps the measured score.

    Args:
        series: the scores of consecutive checks, or a function of this rank returning them.
        **kwargs: the monitor's arguments.
    """

    def __init__(self, series: Sequence[float | None] | Callable[[int], Sequence[float | None]], **kwargs) -> None:
        super().__init__(**kwargs)
        self.series = series
        self.calls = 0

    def measure(self, model, request: MeasureRequest) -> Measurement:
        measured = super().measure(model, request)
        series = self.series(self.watch.probe_set.rank) if callable(self.series) else self.series
        value = series[self.calls]
        self.calls += 1
        if value is not None:
            measured.report.primary.memorization_score.fill_(value)
        return measured
