"""The framework-free monitoring core (pure torch): :class:`MemorizationWatch` and its parts (the probe set, the
measurement function, the reduction over processes, the cost governor, the stop rule, the safe weights)."""

from memcallback.core.calibration import CALIBRATED_RULES, CalibratedRule
from memcallback.core.distributed import CountingReducer, NoDistribution, Reducer, TorchDistributed
from memcallback.core.governor import CostGovernor, GovernorConfig
from memcallback.core.measurement import Measurement, MeasureRequest, NullImages, ReferenceImages, measure
from memcallback.core.probes import ProbeConfig, ProbeSet, sample_rows
from memcallback.core.result import CheckResult
from memcallback.core.stopping import StopConfig, StopRule
from memcallback.core.watch import MemorizationWatch

__all__ = [
    "CALIBRATED_RULES",
    "CalibratedRule",
    "CheckResult",
    "CostGovernor",
    "CountingReducer",
    "GovernorConfig",
    "MeasureRequest",
    "Measurement",
    "MemorizationWatch",
    "NoDistribution",
    "NullImages",
    "ProbeConfig",
    "ProbeSet",
    "Reducer",
    "ReferenceImages",
    "StopConfig",
    "StopRule",
    "TorchDistributed",
    "measure",
    "sample_rows",
]
