"""memcallback: detect memorization in diffusion models while they train, from the sharpness of the learned density.

Public API (exported lazily: ``import memcallback.spectral``, ``.measure`` or ``.core`` loads no Lightning):
    MemorizationMonitor   the Lightning callback                          (memcallback.lightning)
    MemorizationWatch     the same monitoring in any training loop        (memcallback.core)
    analyze               one measurement of a model, without a Trainer   (memcallback.measure)
    conditional_report    the paper's conditional detection metric per class, without a Trainer
    DiffusionModel        the protocol a model implements to be watched   (memcallback.diffusion)
    NoiseSchedule         variance-preserving noise schedules
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: public name -> the module that defines it; imported on first access (PEP 562).
_EXPORTS = {
    "MemorizationMonitor": "memcallback.lightning",
    "SharpnessConfig": "memcallback.measure",
    "SharpnessReport": "memcallback.measure",
    "SharpnessStats": "memcallback.measure",
    "ConditionalReport": "memcallback.measure",
    "MemorizationLabels": "memcallback.measure",
    "analyze": "memcallback.measure",
    "conditional_report": "memcallback.measure",
    "memorization_labels": "memcallback.measure",
    "nearest_neighbours": "memcallback.measure",
    "CheckResult": "memcallback.core",
    "MemorizationWatch": "memcallback.core",
    "ProbeConfig": "memcallback.core",
    "GovernorConfig": "memcallback.core",
    "StopConfig": "memcallback.core",
    "StopRule": "memcallback.core",
    "ConditionalConfig": "memcallback.measure",
    "DiffusionModel": "memcallback.diffusion",
    "NoiseSchedule": "memcallback.diffusion",
    "ddim_sample": "memcallback.diffusion",
    "ddpm_sample": "memcallback.diffusion",
    "score_function": "memcallback.diffusion",
}

__all__ = [
    "CheckResult",
    "ConditionalConfig",
    "ConditionalReport",
    "DiffusionModel",
    "GovernorConfig",
    "MemorizationLabels",
    "MemorizationMonitor",
    "MemorizationWatch",
    "NoiseSchedule",
    "ProbeConfig",
    "SharpnessConfig",
    "SharpnessReport",
    "SharpnessStats",
    "StopConfig",
    "StopRule",
    "__version__",
    "analyze",
    "conditional_report",
    "ddim_sample",
    "ddpm_sample",
    "memorization_labels",
    "nearest_neighbours",
    "score_function",
]

if TYPE_CHECKING:
    from memcallback.core import CheckResult, GovernorConfig, MemorizationWatch, ProbeConfig, StopConfig, StopRule
    from memcallback.diffusion import DiffusionModel, NoiseSchedule, ddim_sample, ddpm_sample, score_function
    from memcallback.lightning import MemorizationMonitor
    from memcallback.measure import (
        ConditionalReport,
        MemorizationLabels,
        SharpnessConfig,
        SharpnessReport,
        SharpnessStats,
        analyze,
        conditional_report,
        memorization_labels,
        nearest_neighbours,
    )
    from memcallback.measure.conditional import ConditionalConfig


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'memcallback' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
