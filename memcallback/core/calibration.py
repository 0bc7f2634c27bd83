"""The calibrated constants of the default stop rule, frozen: each written once, with where it was measured.

``StopConfig(monitor="auto")`` (the default) stops on the relative loss gap when held-out data are given, else on
the probes' copy rate (its lower confidence bound) when training data are given, else on the memorization score,
each with the threshold and margin below; a monitor named by the user with
``threshold="auto"`` / ``min_delta="auto"`` takes its entry here too. A constant here is changed only by a new
calibration on the calibration families, followed by a report on families it was not calibrated on
(docs/transfer/protocol.md).
"""

from __future__ import annotations

from dataclasses import dataclass

from memcallback.measure import names

#: The copy rate the copy-rate stop is meant to catch: the transfer study's deadline (the nn-rate's lower bound past
#: 10%, issue 17). Not a threshold of any rule: the rule's power at this rate (``copy_rate_power``) is what the watch
#: states when the cost governor cuts the probes it labels.
COPY_RATE_TO_CATCH = 0.10


@dataclass(frozen=True)
class CalibratedRule:
    """A stop rule's constants for one monitor (``mode="max"``: larger values mean more memorization).

    Attributes:
        threshold: the level the monitored value must pass.
        min_delta: the margin above its best (lowest) value so far.
        source: where it was calibrated and tested.
    """

    threshold: float
    min_delta: float
    source: str


CALIBRATED_RULES: dict[str, CalibratedRule] = {
    names.LOSS_GAP: CalibratedRule(
        threshold=0.25, min_delta=0.0,
        source="calibrated on the 16x16 photo-patch runs of seed 1 (docs/scale/loss_gap.md, pre-registered); "
               "reported on three other model families there and on the transfer families (docs/transfer/)"),
    names.NN_RATE_LOWER: CalibratedRule(
        threshold=0.01, min_delta=0.0,
        source="not fitted to data: a model whose samples copy at a rate of 1% or less passes it with probability "
               "at most 5% per check (the bound's confidence), and with 64 probes one copying at 10% passes it "
               "with probability 0.96 (docs/transfer/constants.md, amendment 2); reported on the transfer "
               "families (docs/transfer/results.md)"),
    names.SCORE: CalibratedRule(
        threshold=0.05, min_delta=0.05,
        source="calibrated on the 8x8 digits runs (docs/validation/stopping.md); does not carry over to other "
               "data (docs/transfer/results.md)"),
}
