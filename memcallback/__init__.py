"""memcallback: detect memorization in diffusion models while they train, from the sharpness of the learned density.

Public API:
    MemorizationMonitor   the Lightning callback
    analyze               one measurement of a model, without a Trainer
    conditional_report    the paper's conditional detection metric per class, without a Trainer
    DiffusionModel        the protocol a model implements to be watched
    NoiseSchedule         variance-preserving noise schedules
"""

from memcallback.analysis import SharpnessReport, analyze
from memcallback.callback import MemorizationMonitor
from memcallback.conditional import ConditionalReport, conditional_report
from memcallback.diffusion import DiffusionModel, NoiseSchedule, ddim_sample, ddpm_sample, score_function
from memcallback.ground_truth import MemorizationLabels, memorization_labels, nearest_neighbours
from memcallback.sharpness import SharpnessConfig, SharpnessStats
from memcallback.stopping import StopRule

__version__ = "0.1.0"

__all__ = [
    "ConditionalReport",
    "DiffusionModel",
    "MemorizationLabels",
    "MemorizationMonitor",
    "NoiseSchedule",
    "SharpnessConfig",
    "SharpnessReport",
    "SharpnessStats",
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
