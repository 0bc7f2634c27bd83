"""The measurement tier (pure torch): per-sample sharpness and the memorization score, one measurement of a
model (:func:`analyze`), the sharpness and loss gaps between training and held-out images, the conditional metrics,
and the nearest-neighbour ground truth."""

from memcallback.measure.analysis import analyze
from memcallback.measure.conditional import ConditionalConfig, ConditionalReport, conditional_report
from memcallback.measure.ground_truth import MemorizationLabels, memorization_labels, nearest_neighbours
from memcallback.measure.loss_gap import LossGap, loss_gap
from memcallback.measure.reference import SharpnessGap, sharpness_gap
from memcallback.measure.report import SharpnessReport, auroc
from memcallback.measure.sharpness import SharpnessConfig, SharpnessStats, measure_sharpness

__all__ = [
    "ConditionalConfig",
    "ConditionalReport",
    "LossGap",
    "MemorizationLabels",
    "SharpnessConfig",
    "SharpnessGap",
    "SharpnessReport",
    "SharpnessStats",
    "analyze",
    "auroc",
    "conditional_report",
    "loss_gap",
    "measure_sharpness",
    "memorization_labels",
    "nearest_neighbours",
    "sharpness_gap",
]
